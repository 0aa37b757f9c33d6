"""A vLLM ``RequestQueue`` ordered by a policy's ``waiting_key`` (a heap, O(log n) add/pop).

Ties go to the earlier arrival, then to insertion order. vLLM "prepends" preempted and skipped
requests; in an ordered queue that is just a re-insert (as in vLLM's own PriorityRequestQueue).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request


class KeyedRequestQueue(RequestQueue):
    def __init__(self, key: Callable[[Request], Any]) -> None:
        self._key = key
        self._heap: list[tuple[Any, float, int, Request]] = []
        self._seq = itertools.count()

    def add_request(self, request: Request) -> None:
        heapq.heappush(self._heap, (self._key(request), request.arrival_time, next(self._seq), request))

    def pop_request(self) -> Request:
        if not self._heap:
            raise IndexError("pop from an empty queue")
        return heapq.heappop(self._heap)[3]

    def peek_request(self) -> Request:
        if not self._heap:
            raise IndexError("peek from an empty queue")
        return self._heap[0][3]

    def prepend_request(self, request: Request) -> None:
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: Request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = requests if isinstance(requests, set) else set(requests)
        self._heap = [e for e in self._heap if e[3] not in gone]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (e[3] for e in sorted(self._heap))
