"""Every piece of schedlab that depends on vLLM 0.32's internals, in one module.

A vLLM upgrade should break here, loudly (an ``AttributeError``/``AssertionError`` naming the missing
member at import or bind time), and nowhere else. Rules: never copy a vLLM function; wrap or delegate
around the one decision we change.
"""

from __future__ import annotations

# ---- block pool: allocation and eviction (free queue, single-type managers) ----
#
# vLLM 0.32's ``BlockPool.get_new_blocks(n)`` makes its one decision with ``free_block_queue.popleft_n(n)``
# and then evicts hashes and sets ref counts itself. The single-type managers (one per KV cache group)
# are where vLLM knows which request a block is for: ``allocate_new_blocks(request_id, ...)`` and
# ``allocate_external_computed_blocks(request_id, ...)`` call ``get_new_blocks``. So:
# - the live free queue's class becomes ``ChoosingFreeBlockQueue``: ``popleft_n`` asks a chooser for
#   block ids and unlinks them with vLLM's own ``remove``; ``prepend_n``/``append_n``/``append`` report
#   blocks joining the queue (prepended: evict-first = uncached; appended: the cached end);
# - each manager's class becomes a subclass (``_request_aware``) that sets (manager, request_id) as the queue's
#   per-call context around vLLM's own allocate methods;
# - the pool's class becomes ``PolicyBlockPool`` only to report prefix-cache hits (``touch``).
# Live objects are referenced from the coordinator, managers and every ``KVCacheBlock.pool``, so their
# classes are switched in place instead of building new ones.

import functools  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

from vllm.v1.core.block_pool import BlockPool  # noqa: E402
from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock  # noqa: E402
from vllm.v1.core.single_type_kv_cache_manager import SingleTypeKVCacheManager  # noqa: E402

for _owner, _members in ((FreeKVCacheBlockQueue, ("popleft_n", "remove", "prepend_n", "append_n", "append")),
                         (BlockPool, ("get_new_blocks", "touch", "free_blocks")),
                         (SingleTypeKVCacheManager, ("allocate_new_blocks", "allocate_external_computed_blocks",
                                                     "req_to_blocks", "kv_cache_group_id", "block_pool"))):
    for _member in _members:  # a vLLM upgrade that renames one of these breaks here, at import
        if _member not in dir(_owner) and _member not in getattr(_owner.__init__, "__code__").co_names:
            raise ImportError(f"policies.vllm_glue: vLLM's {_owner.__name__} has no {_member!r} (written for vLLM 0.32)")


class ChoosingFreeBlockQueue(FreeKVCacheBlockQueue):
    """vLLM's free queue whose ``popleft_n`` hands out the blocks ``choose(n, manager, request_id)``
    names (checked by the chooser) instead of the first ``n``."""

    choose: Callable[[int, object, str | None], list[KVCacheBlock]]
    on_join: Callable[[list[KVCacheBlock], bool], None]  # (blocks, at_cached_end)
    context: tuple[object, str] | None

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        if n == 0:
            return []
        context = self.context
        blocks = self.choose(n, *context) if context is not None else self.choose(n, None, None)
        remove = FreeKVCacheBlockQueue.remove
        for block in blocks:
            remove(self, block)
        return blocks

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        super().prepend_n(blocks)
        if blocks:
            self.on_join(blocks, False)

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        super().append_n(blocks)
        if blocks:
            self.on_join(blocks, True)

    def append(self, block: KVCacheBlock) -> None:
        super().append(block)
        self.on_join([block], True)


class PolicyBlockPool(BlockPool):
    """vLLM's BlockPool that reports prefix-cache hits (``touch``) to the eviction policy."""

    on_hit: Callable[[Sequence[KVCacheBlock]], None]

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        super().touch(blocks)
        self.on_hit(blocks)


def _with_request(vllm_method):
    """vLLM's manager method, run with (manager, request_id) as the free queue's context."""

    @functools.wraps(vllm_method)
    def method(self, request_id, *args, **kwargs):
        queue = self.block_pool.free_block_queue
        if queue.__class__ is not ChoosingFreeBlockQueue:  # the manager was rebound to another pool (HiSparse host)
            return vllm_method(self, request_id, *args, **kwargs)
        queue.context = (self, request_id)  # vLLM's allocate methods do not nest
        try:
            return vllm_method(self, request_id, *args, **kwargs)
        finally:
            queue.context = None

    return method


@functools.cache
def _request_aware(cls: type) -> type:
    """``cls`` (a single-type manager class) whose allocate methods tell the allocator the request."""
    return type(cls.__name__, (cls,), {
        "__module__": __name__, "__qualname__": cls.__qualname__, "__slots__": (), "request_aware": True,
        "allocate_new_blocks": _with_request(cls.allocate_new_blocks),
        "allocate_external_computed_blocks": _with_request(cls.allocate_external_computed_blocks),
    })


def held_blocks(manager, request_id: str | None) -> int:
    """Blocks ``request_id`` already holds in ``manager``'s KV cache group (its next block index)."""
    return len(manager.req_to_blocks.get(request_id, ())) if request_id is not None else 0


def group_of(manager) -> int:
    return manager.kv_cache_group_id


def managers_of(scheduler) -> list:
    return list(scheduler.kv_cache_manager.coordinator.single_type_managers)


def install_choice(pool: BlockPool, scheduler, choose, on_join, on_hit) -> None:
    """Route ``pool``'s choice of free blocks through ``choose`` and its free/hit events to the
    callbacks; managers allocating from ``pool`` pass their request as context."""
    queue = pool.free_block_queue
    queue.__class__ = ChoosingFreeBlockQueue
    queue.choose, queue.on_join, queue.context = choose, on_join, None
    pool.__class__ = PolicyBlockPool
    pool.on_hit = on_hit
    for manager in managers_of(scheduler):
        if manager.block_pool is pool and not getattr(manager, "request_aware", False):
            manager.__class__ = _request_aware(type(manager))


def referenced_blocks(scheduler, pool: BlockPool):
    """(request id, block) for every reference a request holds on a block of ``pool``, counted the way
    vLLM 0.32 counts ``ref_cnt``: a manager's block table holds one reference per non-null block, but
    - a manager may allocate from another pool (HiSparse's host group: its own block ids), so only
      managers of ``pool`` count;
    - HiSparse's resident groups read their table through residency changes (a page dropped when its
      block was reused, a page adopted from a GPU copy) and release the reference of clean pages they
      keep reading (``unpin_blocks``: ``unpinned_pages``), so those count as vLLM sees them.
    Requests in every queue (running, waiting with blocks, ``kv_holding_waiting``: a KV connector's
    loads in flight) hold their blocks in these tables."""
    for manager in managers_of(scheduler):
        if manager.block_pool is not pool:
            continue
        residency = getattr(manager, "get_residency_row", None)
        states = getattr(getattr(manager, "coordinator", None), "request_states", None) or {}
        for request_id, blocks in list(manager.req_to_blocks.items()):
            if residency is not None:
                blocks = residency(request_id)
            state = states.get(request_id)
            unpinned = state.unpinned_pages if state is not None else ()
            for index, block in enumerate(blocks):
                if not block.is_null and index not in unpinned:
                    yield request_id, block


def is_free(block: KVCacheBlock) -> bool:
    """Linked in vLLM's free queue (the null block never is)."""
    return block.prev_free_block is not None


def free_queue_front(pool: BlockPool):
    """The free queue's blocks from its front (vLLM's next to hand out)."""
    queue = pool.free_block_queue
    block, tail = queue.fake_free_list_head.next_free_block, queue.fake_free_list_tail
    while block is not tail and block is not None:
        yield block
        block = block.next_free_block




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


def num_free_kv_blocks(sched: _Scheduler) -> int:
    """Free KV blocks (cached-but-free ones included: vLLM evicts them on demand)."""
    return sched.kv_cache_manager.block_pool.get_num_free_blocks()


def kv_blocks_freed_by(sched: _Scheduler, request: _Request) -> int:
    """Blocks that preempting this running request would return to the free queue: those only it
    holds (a prefix block shared with another request stays in use)."""
    groups = sched.kv_cache_manager.coordinator.get_blocks(request.request_id)
    return sum(1 for blocks in groups for b in blocks if b.ref_cnt == 1 and not b.is_null)


def kv_blocks_needed(sched: _Scheduler, request: _Request) -> int:
    """New blocks a waiting request needs to hold all its tokens, the prefix-cache hit aside (the
    cache is looked up only when the whole prompt would not fit anyway)."""
    block_size, free = sched.block_size, num_free_kv_blocks(sched)
    need = -(-request.num_tokens // block_size)
    if need <= free:
        return need
    return -(-(request.num_tokens - cached_prefix_tokens(sched, request)) // block_size)


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
