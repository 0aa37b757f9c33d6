"""Prefill budget: Sarathi-Serve's stall-free batching (Agrawal et al., "Taming Throughput-Latency
Tradeoff in LLM Inference with Sarathi-Serve", OSDI'24). Every step gets a fixed token budget (the
paper's tau); ongoing decodes are scheduled first and chunks of prefills fill what is left, so a long
prompt never stalls the decodes. vLLM's scheduler already schedules running requests (decodes and
partial prefills) before new ones; this policy sets the budget per step, and optionally caps the
tokens of one request's prefill chunk and the number of requests prefilling at once. Order: FCFS.
"""

from __future__ import annotations

from policies.base import PrefillLimits, SchedulingPolicy


class Sarathi(SchedulingPolicy):
    name = "sarathi"

    def __init__(self, token_budget: int = 512, chunk_tokens: int | None = None,
                 max_partial_prefills: int | None = None) -> None:  # fmt: skip
        self.limits = PrefillLimits(max_partial_prefills=max_partial_prefills, chunk_tokens=chunk_tokens,
                                    step_tokens=token_budget)  # fmt: skip

    def prefill_limits(self) -> PrefillLimits:
        return self.limits
