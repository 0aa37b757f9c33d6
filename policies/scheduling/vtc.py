"""Virtual Token Counter fairness (Sheng et al., "Fairness in Serving Large Language Models",
OSDI'24). Each tenant has a counter of the service it received (input tokens x ``input_weight`` +
output tokens x ``output_weight``); the waiting request of the tenant with the smallest counter is
admitted next (FIFO within a tenant), and a tenant that becomes active is lifted to the smallest
active counter so idle time is not banked. Victim: the running request of the most-served tenant.

Counters change while requests wait, so VTC brings its own RequestQueue (one FIFO per tenant).
Within a step, an admission is charged provisionally (its uncomputed tokens) so that one step
alternates tenants too; ``on_schedule`` replaces that by the tokens actually scheduled.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator

from policies.base import SchedulingPolicy, tenant


class VTC(SchedulingPolicy):
    name = "vtc"

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: defaultdict[str, float] = defaultdict(float)
        self.provisional: defaultdict[str, float] = defaultdict(float)
        self.queues: list[TenantFairQueue] = []

    def counter(self, t: str) -> float:
        return self.counters[t] + self.provisional[t]

    def make_queue(self) -> TenantFairQueue:
        queue = TenantFairQueue(self)
        self.queues.append(queue)
        return queue

    def preemption_key(self, request):
        return (self.counter(tenant(request)), request.arrival_time)

    def on_schedule(self, output) -> None:
        self.provisional.clear()
        for req_id, n in output.num_scheduled_tokens.items():
            request = self.scheduler.requests[req_id]
            before = request.num_computed_tokens - n  # vLLM already advanced it
            prefill = max(0, min(n, request.num_prompt_tokens - before))
            self.counters[tenant(request)] += self.input_weight * prefill + self.output_weight * (n - prefill)

    def lift(self, t: str) -> None:
        """A newly active tenant starts at the smallest counter among active tenants."""
        active = {tenant(r) for r in self.scheduler.running}
        for q in self.queues:
            active.update(name for name, fifo in q.fifos.items() if fifo)
        active.discard(t)
        if active:
            self.counters[t] = max(self.counters[t], min(self.counter(a) for a in active))


class TenantFairQueue:
    """A vLLM RequestQueue (duck-typed) with one FIFO per tenant; the head of the least-served
    tenant's FIFO is next."""

    def __init__(self, policy: VTC) -> None:
        self.policy = policy
        self.fifos: dict[str, deque] = {}
        self._len = 0

    def _next_tenant(self) -> str:
        heads = [(self.policy.counter(t), fifo[0].arrival_time, t) for t, fifo in self.fifos.items() if fifo]
        if not heads:
            raise IndexError("peek from an empty queue")
        return min(heads)[2]

    def add_request(self, request) -> None:
        t = tenant(request)
        fifo = self.fifos.setdefault(t, deque())
        if not fifo and not any(tenant(r) == t for r in self.policy.scheduler.running):
            self.policy.lift(t)
        fifo.append(request)
        self._len += 1

    def peek_request(self):
        return self.fifos[self._next_tenant()][0]

    def pop_request(self):
        t = self._next_tenant()
        request = self.fifos[t].popleft()
        self._len -= 1
        self.policy.provisional[t] += self.policy.input_weight * (request.num_tokens - request.num_computed_tokens)
        return request

    def prepend_request(self, request) -> None:
        self.fifos.setdefault(tenant(request), deque()).appendleft(request)
        self._len += 1

    def prepend_requests(self, requests: Iterable) -> None:
        for request in requests:  # same order semantics as vLLM's FCFS extendleft
            self.prepend_request(request)

    def remove_request(self, request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable) -> None:
        gone = set(requests)
        for t, fifo in self.fifos.items():
            self.fifos[t] = deque(r for r in fifo if r not in gone)
        self._len = sum(len(f) for f in self.fifos.values())

    def __bool__(self) -> bool:
        return self._len > 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator:
        for t in sorted(self.fifos, key=self.policy.counter):
            yield from self.fifos[t]
