"""Cache-aware longest-prefix-match first: SGLang's LPM policy (Zheng et al., "SGLang: Efficient
Execution of Structured Language Model Programs", NeurIPS'24, §3). The waiting request whose prompt
has the longest prefix already in the KV cache goes first (ties: earlier arrival), so cached
prefixes are reused before they are evicted and requests sharing a prefix run together.

The cache changes every step, so the queue is re-keyed every step. As in SGLang, with more than
``max_queue`` waiting requests the order falls back to first-come-first-served: the prefix lookups
would cost more than they save.
"""

from __future__ import annotations

from policies.base import SchedulingPolicy


class LPM(SchedulingPolicy):
    name = "lpm"
    rekey_every = 1

    def __init__(self, max_queue: int = 128) -> None:
        self.max_queue = max_queue

    def waiting_key(self, request):
        if self.scheduler.get_request_counts()[1] > self.max_queue:
            return 0  # FCFS: ties go to the earlier arrival
        return -self.cached_prefix_len(request)
