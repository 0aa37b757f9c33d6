"""vLLM ``RequestQueue``s for the waiting queue.

``KeyedRequestQueue``: ordered by a policy's ``waiting_key`` (a heap, O(log n) add/pop). Ties go to
the earlier arrival, then to insertion order. vLLM "prepends" preempted and skipped requests; in an
ordered queue that is just a re-insert (as in vLLM's own PriorityRequestQueue). ``rekey()``
re-evaluates every key (O(n)), ``rekey(requests)`` only those (a new heap entry each; the old one
is skipped as stale when it surfaces), for keys that change while requests wait. Iteration is
best-first and lazy (the first k requests cost O(k log k)); do not change the queue while iterating.

``TenantQueue``: the same order (or vLLM's FCFS), split per tenant so that a tenant refused by the
allocator can be closed for the rest of a step.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request


def _best_first(heap: list) -> Iterator:
    """The entries of a binary heap, smallest first, without sorting all of it."""
    if not heap:
        return
    frontier = [(heap[0], 0)]
    n = len(heap)
    while frontier:
        entry, i = heapq.heappop(frontier)
        yield entry
        for child in (2 * i + 1, 2 * i + 2):
            if child < n:
                heapq.heappush(frontier, (heap[child], child))


class KeyedRequestQueue(RequestQueue):
    def __init__(self, key: Callable[[Request], Any]) -> None:
        self._key = key
        self._heap: list[tuple[Any, float, int, Request]] = []
        self._live: dict[Request, tuple] = {}  # request -> its current heap entry; other entries are stale
        self._seq = itertools.count()

    def add_request(self, request: Request) -> None:
        entry = (self._key(request), request.arrival_time, next(self._seq), request)
        self._live[request] = entry
        heapq.heappush(self._heap, entry)

    def _top(self) -> tuple:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][3]) is not heap[0]:
            heapq.heappop(heap)  # stale: re-keyed or removed since it was pushed
        if not heap:
            raise IndexError("pop from an empty queue")
        return heap[0]

    def pop_request(self) -> Request:
        request = self._top()[3]
        heapq.heappop(self._heap)
        del self._live[request]
        return request

    def peek_request(self) -> Request:
        return self._top()[3]

    def prepend_request(self, request: Request) -> None:
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: Request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self._live.pop(request, None)
        self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 32:
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Request]:
        live = self._live
        return (e[3] for e in _best_first(self._heap) if live.get(e[3]) is e)

    def rekey(self, requests: Iterable[Request] | None = None) -> None:
        """Re-evaluate ``key`` for every waiting request (None: O(n)), or only for ``requests``
        (O(k log n); those not in this queue are ignored). Ties keep arrival and insertion order."""
        key, live = self._key, self._live
        if requests is None:
            self._heap = [(key(r), e[1], e[2], r) for r, e in live.items()]
            self._live = {e[3]: e for e in self._heap}
            heapq.heapify(self._heap)
            return
        for request in requests:
            old = live.get(request)
            if old is not None and (k := key(request)) != old[0]:
                live[request] = entry = (k, old[1], old[2], request)
                heapq.heappush(self._heap, entry)  # the old entry is now stale
        self._compact_if_stale()


class TenantQueue(RequestQueue):
    """A waiting queue split per tenant, so that a tenant can be closed for the rest of a step.

    Used for ``self.waiting`` when the allocator admits per tenant (``BlockAllocator.admits_by_tenant``):
    once a tenant's request is refused, ``close(tenant)`` hides all its requests from the walk
    vLLM's ``schedule()`` does over the waiting queue, so the walk never passes over them (a step
    costs O(tenants) per admission, not O(waiting)). ``end_step`` re-opens every tenant.

    Order over the open tenants is exactly the single queue's: each tenant's requests are a heap
    ranked by ``(key(request), arrival_time, seq)`` when the policy has a ``waiting_key``
    (as KeyedRequestQueue), else by ``seq`` (vLLM's FCFS deque: added at the back, prepended at the
    front), and the next request is the best head over the open tenants.
    """

    def __init__(self, tenant_of: Callable[[Request], str], key: Callable[[Request], Any] | None = None) -> None:
        self._tenant_of = tenant_of
        self._key = key
        self._heaps: dict[str, list[tuple[tuple, Request]]] = {}
        self._closed: set[str] = set()
        self._seq = itertools.count(1)
        self._peeked: list | None = None

    def _push(self, request: Request, front: bool) -> None:
        n = next(self._seq)
        rank = (-n if front else n,) if self._key is None else (self._key(request), request.arrival_time, n)
        heapq.heappush(self._heaps.setdefault(self._tenant_of(request), []), (rank, request))

    def _next_heap(self) -> list:
        heads = [h for t, h in self._heaps.items() if h and t not in self._closed]
        if not heads:
            raise IndexError("peek from an empty queue (or every waiting tenant is closed)")
        return min(heads, key=lambda h: h[0][0])

    def close(self, tenant: str) -> None:
        """Hide ``tenant``'s requests until ``end_step``."""
        self._closed.add(tenant)

    def end_step(self) -> None:
        self._closed.clear()

    def add_request(self, request: Request) -> None:
        self._push(request, front=False)

    def prepend_request(self, request: Request) -> None:
        self._push(request, front=True)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:  # each one in front of the previous: vLLM's extendleft order
            self._push(request, front=True)

    def peek_request(self) -> Request:
        self._peeked = self._next_heap()
        return self._peeked[0][1]

    def pop_request(self) -> Request:
        # vLLM pops the request it just peeked, also when refusing it has closed its tenant
        heap = self._peeked or self._next_heap()
        self._peeked = None
        return heapq.heappop(heap)[1]

    def remove_request(self, request: Request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = requests if isinstance(requests, set) else set(requests)
        for t, heap in self._heaps.items():
            self._heaps[t] = [e for e in heap if e[1] not in gone]
            heapq.heapify(self._heaps[t])
        self._peeked = None

    def __bool__(self) -> bool:
        """False when every tenant with waiting requests is closed: that ends vLLM's walk."""
        return any(h for t, h in self._heaps.items() if t not in self._closed)

    def __len__(self) -> int:
        return sum(map(len, self._heaps.values()))  # closed tenants too (stats, has_requests)

    def __iter__(self) -> Iterator[Request]:
        return (e[1] for e in heapq.merge(*map(_best_first, self._heaps.values())))

    def rekey(self, requests: Iterable[Request] | None = None) -> None:
        """Re-evaluate the policy's key for every waiting request (FCFS ranks do not change); given
        ``requests``, still all of them (correct, O(n))."""
        if self._key is None:
            return
        for t, heap in self._heaps.items():
            self._heaps[t] = [((self._key(r), rank[1], rank[2]), r) for rank, r in heap]
            heapq.heapify(self._heaps[t])
        self._peeked = None
