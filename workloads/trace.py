"""The one request row type every trace loader returns and every backend replays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Mooncake's prefix block: equal ``Request.prefix_hash_ids`` entries are equal blocks of this many
# prompt tokens.
MOONCAKE_BLOCK_TOKENS = 512


@dataclass
class Request:
    """One request of a workload trace.

    Times are seconds relative to the trace start. ``prompt_token_ids`` is filled by
    ``workloads.prompts`` (exact prompt lengths, real shared prefixes for ``prefix_hash_ids``);
    ``prompt`` holds text where the trace has it (ShareGPT).
    """

    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    tenant: str = "default"
    priority: int = 0
    # Relative deadline (seconds after arrival) for deadline-aware policies such as EDF.
    deadline_s: float | None = None
    # Client-supplied output-length prediction for SJF-style policies (None: unknown).
    output_len_hint: int | None = None
    # Mooncake-style prefix block ids: equal ids = equal MOONCAKE_BLOCK_TOKENS-token prompt blocks.
    prefix_hash_ids: tuple[int, ...] = field(default_factory=tuple)

    def vllm_xargs(self) -> dict[str, Any]:
        """The scheduling metadata policies read (``policies.base``: tenant, deadline, output-length
        hint): sent as ``vllm_xargs`` over HTTP, which vLLM puts in ``SamplingParams.extra_args``,
        and given as those ``extra_args`` directly by the simulator."""
        xargs: dict[str, Any] = {"tenant": self.tenant}
        if self.deadline_s is not None:
            xargs["deadline_s"] = float(self.deadline_s)
        if self.output_len_hint is not None:
            xargs["output_len_hint"] = int(self.output_len_hint)
        return xargs


class Trace(list):
    """``list[Request]`` that also remembers where it came from and what the loader skipped."""

    def __init__(self, requests=(), *, source: str = "", skipped: dict[str, int] | None = None):
        super().__init__(requests)
        self.source = source
        self.skipped: dict[str, int] = dict(skipped or {})

    def derive(self, requests) -> "Trace":
        """A new trace with other rows but the same provenance (used by transforms)."""
        return Trace(requests, source=self.source, skipped=self.skipped)

    @property
    def duration_s(self) -> float:
        return max((r.arrival_s for r in self), default=0.0)
