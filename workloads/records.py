"""Per-request measurements, identical for the real load generator and the simulator."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """What happened to one request. Times in seconds; ``*_s`` offsets are from the run start."""

    request_id: str
    tenant: str = "default"
    priority: int = 0
    deadline_s: float | None = None
    scheduled_send_s: float = 0.0  # when the trace says to send it
    actual_send_s: float = 0.0  # when it was sent (send lag = actual - scheduled)
    ttft_s: float | None = None  # first token time minus actual send time
    e2e_s: float | None = None  # last token time minus actual send time
    itl_s: list[float] = field(default_factory=list)  # gaps between consecutive output tokens
    prompt_tokens: int = 0
    output_tokens: int = 0
    requested_output_tokens: int = 0
    status: int = 0  # HTTP status (200 ok); 0 = no response
    error: str | None = None
    warmup: bool = False  # warm-up requests are excluded from metrics
    # Seconds the load generator's own event loop stood still (stretches > 20 ms) between this
    # request's send and its last token (its first token for ``client_stall_ttft_s``): a token that
    # arrived meanwhile was timed late by up to that much.
    client_stall_s: float = 0.0
    client_stall_ttft_s: float = 0.0

    @property
    def client_stall_share(self) -> float:
        """The largest share of this request's TTFT or e2e latency that a client stall may have added."""
        shares = [stall / t for stall, t in ((self.client_stall_ttft_s, self.ttft_s), (self.client_stall_s, self.e2e_s))
                  if stall > 0 and t]  # fmt: skip
        return max(shares, default=0.0)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (None for single-token outputs)."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)
