"""Least attained service first, with aging. LAS (foreground-background scheduling; Rai,
Urvoy-Keller & Biersack, "Analysis of LAS Scheduling for Job Size Distributions with High
Variance", SIGMETRICS'03) serves the request that has received the least service so far — here
output tokens generated — so short requests finish first without knowing any length (FastServe's
MLFQ is its quantized form). Plain LAS starves long requests under load; with aging, a request in
the system for longer than ``max_wait_s`` goes ahead of every younger one (oldest first).

A waiting request ages while it waits, so its key changes: the queue is re-keyed every
``rekey_every`` steps. Victim: the not-yet-aged running request with the most service (latest
arrival among equals).
"""

from __future__ import annotations

from policies.base import SchedulingPolicy, tokens_served


class LAS(SchedulingPolicy):
    name = "las"

    def __init__(self, max_wait_s: float = 30.0, rekey_every: int = 1) -> None:
        if not max_wait_s > 0:
            raise ValueError(f"las: max_wait_s must be > 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        self.rekey_every = rekey_every

    def aged(self, request) -> bool:
        return self.waited(request) > self.max_wait_s

    def waiting_key(self, request):
        return (0, request.arrival_time) if self.aged(request) else (1, tokens_served(request))

    def preemption_key(self, request):
        return (not self.aged(request), tokens_served(request), request.arrival_time)
