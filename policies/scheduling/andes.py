"""QoE-aware scheduling after Andes (Liu et al., "Andes: Defining and Enhancing Quality-of-Experience
in LLM-Based Text Streaming Services", arXiv:2404.16283).

A streaming user reads at a pace: the first token is expected ``expected_ttft_s`` after arrival,
then ``expected_tds`` tokens per second (the QoE of ``workloads.metrics.qoe``). A request that has
delivered k tokens is *due* its next one at ``arrival + expected_ttft_s + k / expected_tds``; until
then its reader is still busy with tokens already delivered, so pausing it costs no QoE.

- Waiting requests are admitted earliest-due first (a new request is due at arrival + TTFT; a
  preempted one that ran far ahead of its reader waits behind it).
- When KV blocks run out, the running request due latest (the largest reading buffer) is preempted.
- Proactive preemption (the paper's token-level preemption): while a waiting request is due
  within ``urgent_s`` and no batch slot is free, the running request with the largest buffer is
  preempted if that buffer exceeds ``min_buffer_s`` (enough to cover its recomputation), at most
  ``max_preemptions_per_step`` per step.

Simplified from the paper: its knapsack over QoE gain per unit of GPU memory is replaced by the
earliest-due / largest-buffer rule, which is the same order when every request costs the same.
"""

from __future__ import annotations

from policies.base import SchedulingPolicy, tokens_served


class Andes(SchedulingPolicy):
    name = "andes"

    def __init__(self, expected_ttft_s: float = 1.0, expected_tds: float = 5.0, urgent_s: float = 0.5,
                 min_buffer_s: float = 5.0, max_preemptions_per_step: int = 4) -> None:  # fmt: skip
        if expected_ttft_s < 0 or expected_tds <= 0 or min_buffer_s < 0 or max_preemptions_per_step < 0:
            raise ValueError(
                f"andes needs expected_ttft_s >= 0, expected_tds > 0, min_buffer_s >= 0, "
                f"max_preemptions_per_step >= 0; got {expected_ttft_s}, {expected_tds}, {min_buffer_s}, "
                f"{max_preemptions_per_step}"
            )
        self.expected_ttft_s, self.expected_tds = expected_ttft_s, expected_tds
        self.urgent_s, self.min_buffer_s = urgent_s, min_buffer_s
        self.max_preemptions_per_step = max_preemptions_per_step

    def due(self, request) -> float:
        """When the reader of ``request`` finishes the tokens delivered so far."""
        return request.arrival_time + self.expected_ttft_s + tokens_served(request) / self.expected_tds

    def waiting_key(self, request):
        return self.due(request)

    def preemption_key(self, request):
        return self.due(request)

    def to_preempt(self):
        if self.max_preemptions_per_step == 0 or self.free_slots() > 0:
            return []
        now = self.now()
        urgent = 0
        for request in self.iter_waiting():
            if self.due(request) > now + self.urgent_s or urgent == self.max_preemptions_per_step:
                break
            urgent += 1
        ahead = sorted((r for r in self.scheduler.running if self.due(r) - now > self.min_buffer_s),
                       key=self.due, reverse=True)  # fmt: skip
        return ahead[:urgent]
