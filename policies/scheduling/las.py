"""Least attained service first, with aging. LAS (foreground-background scheduling; Rai,
Urvoy-Keller & Biersack, "Analysis of LAS Scheduling for Job Size Distributions with High
Variance", SIGMETRICS'03) serves the request that has received the least service so far — here
output tokens generated — so short requests finish first without knowing any length (FastServe's
MLFQ is its quantized form). Plain LAS starves long requests under load; with aging, a request in
the system for longer than ``max_wait_s`` goes ahead of every younger one (oldest first).

A waiting request ages while it waits, so its key changes: every ``rekey_every`` steps the
requests that have aged since are re-keyed (they age in the order of the times they will be old,
kept in a heap, so a re-key costs O(aged log n), not O(waiting)). Victim: the not-yet-aged running
request with the most service (latest arrival among equals).
"""

from __future__ import annotations

import heapq
import itertools

from policies.base import SchedulingPolicy, tokens_served


class LAS(SchedulingPolicy):
    name = "las"

    def __init__(self, max_wait_s: float = 30.0, rekey_every: int = 1) -> None:
        if not max_wait_s > 0:
            raise ValueError(f"las: max_wait_s must be > 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        self.rekey_every = rekey_every
        self.ageing: list = []  # (time it becomes aged, seq, request) for requests keyed as young
        self.seq = itertools.count()

    def aged(self, request) -> bool:
        return self.waited(request) > self.max_wait_s

    def waiting_key(self, request):
        if self.aged(request):
            return (0, request.arrival_time)
        heapq.heappush(self.ageing, (request.arrival_time + self.max_wait_s, next(self.seq), request))
        return (1, tokens_served(request))

    def stale_keys(self):
        now, ageing, stale = self.now(), self.ageing, []
        while ageing and ageing[0][0] < now:
            stale.append(heapq.heappop(ageing)[2])
        return stale

    def preemption_key(self, request):
        return (not self.aged(request), tokens_served(request), request.arrival_time)
