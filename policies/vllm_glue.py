"""Every piece of schedlab that depends on vLLM 0.32's internals, in one module.

A vLLM upgrade should break here, loudly (an ``AttributeError``/``AssertionError`` naming the missing
member at import or bind time), and nowhere else. Rules: never copy a vLLM function; wrap or delegate
around the one decision we change.
"""

from __future__ import annotations

# ---- block pool: allocation and eviction (free queue, single-type managers) ----



# ---- scheduler: waiting queues, preemption, prefill control, clock ----

import time as _time
from collections.abc import Callable as _Callable, Iterable as _Iterable, Iterator as _Iterator

from vllm.v1.core.sched.request_queue import RequestQueue as _RequestQueue
from vllm.v1.core.sched.scheduler import Scheduler as _Scheduler
from vllm.v1.request import Request as _Request, RequestStatus as _RequestStatus

# The waiting queues of vLLM 0.32's Scheduler, in the order schedule() drains them (kv_holding_waiting
# first). vLLM 0.34 adds "async_kv_waiting": list it here when upgrading.
WAITING_QUEUES: tuple[str, ...] = ("kv_holding_waiting", "waiting")

# Scheduler members the hooks below rely on (checked at import: an upgrade that drops one fails here).
for _member in ("_preempt_request", "_handle_blocked_waiting_request", "schedule", "update_from_output"):
    assert hasattr(_Scheduler, _member), f"vLLM's Scheduler has no {_member}: update policies/vllm_glue.py"


def waiting_queues(sched: _Scheduler) -> list[_RequestQueue]:
    """Every RequestQueue of ``sched`` that holds waiting requests, in the order vLLM admits from them."""
    return [getattr(sched, name) for name in WAITING_QUEUES]


def replace_waiting_queues(sched: _Scheduler, make: _Callable[[], _RequestQueue]) -> None:
    """Give every waiting queue of ``sched`` a fresh ``make()`` queue (right after ``Scheduler.__init__``,
    while they are still empty)."""
    for name in WAITING_QUEUES:
        assert not getattr(sched, name), f"scheduler.{name} is not empty"
        setattr(sched, name, make())


def iter_waiting(sched: _Scheduler) -> _Iterator[_Request]:
    """Waiting requests in the order vLLM would consider them (each queue's own ``__iter__`` order)."""
    for queue in waiting_queues(sched):
        yield from queue


def num_free_slots(sched: _Scheduler) -> int:
    """How many more requests vLLM would admit into RUNNING (``max_num_active_reqs`` minus the running
    ones and paused streaming sessions, which hold a slot)."""
    return sched.max_num_active_reqs - len(sched.running) - sched.num_waiting_for_streaming_input


def preempt_running(sched: _Scheduler, victims: _Iterable[_Request]) -> None:
    """Preempt running requests now, outside ``schedule()``, as vLLM's own ``reset_prefix_cache`` does:
    out of ``sched.running``, then vLLM's ``_preempt_request`` (frees the blocks, counts
    ``num_preemptions``, records the PREEMPTED event, puts the request back in the waiting queue and
    reports it in the next ``SchedulerOutput.preempted_req_ids``). In the order given: in vLLM's FCFS
    deque each victim goes in front of the previous one."""
    victims = list(victims)
    gone = set(victims)
    sched.running[:] = [r for r in sched.running if r not in gone]
    timestamp = _time.monotonic()  # vLLM's event clock
    for request in victims:
        sched._preempt_request(request, timestamp, drop_stale_output=sched.requires_kv_delivery)
        # A victim resumed later must be sent to the model runner in full (as in reset_prefix_cache).
        sched.prev_step_scheduled_req_ids.discard(request.request_id)


def is_running(sched: _Scheduler, request: _Request) -> bool:
    return request.status == _RequestStatus.RUNNING and request in sched.running


def is_mid_prefill(request: _Request) -> bool:
    """Whether the last chunk scheduled for this running request left part of its prefill to do."""
    return request.is_prefill_chunk


def cached_prefix_tokens(sched: _Scheduler, request: _Request) -> int:
    """Tokens of a waiting request's prompt that vLLM's prefix cache would serve if it were admitted
    now: the lookup ``get_computed_blocks`` does, without its side effects (KV events, stats)."""
    kvm = sched.kv_cache_manager
    if not kvm.prefix_cache_lookup_enabled(request):
        return 0
    return kvm.coordinator.find_longest_cache_hit(request.block_hashes, request.num_tokens - 1)[1]


class StepLimits:
    """vLLM's per-step token knobs, read by ``schedule()`` when it starts: the step's token budget
    (``Scheduler.max_num_scheduled_tokens``) and the cap on tokens one request gets in a step
    (``scheduler_config.long_prefill_token_threshold``, which in practice caps prefill chunks).
    ``set`` changes them for the next step; ``None`` restores the configured value."""

    def __init__(self, sched: _Scheduler) -> None:
        self.sched = sched
        self.step_tokens = sched.max_num_scheduled_tokens
        self.chunk_tokens = sched.scheduler_config.long_prefill_token_threshold
        self.max_active = sched.max_num_active_reqs

    def set(self, step_tokens: int | None, chunk_tokens: int | None) -> None:
        sched = self.sched
        sched.max_num_scheduled_tokens = self.step_tokens if step_tokens is None else min(step_tokens, self.step_tokens)
        sched.scheduler_config.long_prefill_token_threshold = self.chunk_tokens if chunk_tokens is None else chunk_tokens

    def stop_admitting(self) -> None:
        """No more waiting requests this step: vLLM's walk over the waiting queues ends at its
        "no free slot" check (a walk that refused each request would visit the whole queue)."""
        self.sched.max_num_active_reqs = 0

    def end_step(self) -> None:
        self.sched.max_num_active_reqs = self.max_active
