"""The allocator's side of vLLM's BlockPool: the allocator chooses block ids, the pool does the rest.

``install_allocator`` routes the one decision of vLLM's ``BlockPool.get_new_blocks`` (which free
blocks) through ``BlockChooser``: it builds the request's ``Allocation``, asks ``allocator.choose``,
checks the ids (free, distinct, not the null block, as many as asked) and hands the blocks back to
vLLM's own code, which unlinks them from the free queue, evicts their hashes and sets ref counts.
Nothing here copies vLLM: the version-specific hooks live in ``policies.vllm_glue``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from policies import vllm_glue
from policies.base import Allocation, BlockAllocator, EvictionPolicy
from policies.vllm_glue import PolicyBlockPool  # noqa: F401  (the pool's class once installed)


class BlockChoiceError(ValueError):
    """An allocator or eviction policy chose blocks the pool cannot hand out (nothing was changed)."""


class FreeBlocks:
    """What ``choose`` may read: the pool's free blocks by id, vLLM's own order, the eviction policy."""

    __slots__ = ("pool", "blocks", "eviction", "victims", "fronted")

    def __init__(self, pool: BlockPool, eviction: EvictionPolicy) -> None:
        self.pool = pool
        self.blocks = pool.blocks
        self.eviction = eviction
        self.victims: list[int] = []  # handed out by evict() in the current choice
        self.fronted: list[int] = []  # handed out by front_uncached() in the current choice

    def __len__(self) -> int:
        return self.pool.get_num_free_blocks()

    @property
    def num_blocks(self) -> int:
        """All blocks, the null block (id 0) included: ids run 1 .. num_blocks - 1."""
        return len(self.blocks)

    def is_free(self, block_id: int) -> bool:
        return self.blocks[block_id].prev_free_block is not None

    def is_uncached(self, block_id: int) -> bool:
        """Free and without a prefix-cache hash: handing it out evicts nothing."""
        block = self.blocks[block_id]
        return block.prev_free_block is not None and block.block_hash is None

    def front_uncached(self, k: int) -> list[int]:
        """Up to ``k`` uncached free ids in vLLM's order (recently freed first, LIFO), O(k)."""
        out = []
        if k > 0:
            for block in vllm_glue.free_queue_front(self.pool):
                if block.block_hash is not None or len(out) == k:
                    break
                out.append(block.block_id)
        self.fronted += out
        return out

    def evict(self, k: int) -> list[int]:
        """``k`` free ids chosen by the eviction policy (cached-but-free blocks, first victim first).
        Every victim must be in the returned choice."""
        if k <= 0:
            return []
        ids = self.eviction.evict(self, k)
        blocks = self.blocks
        for i in ids:
            if not (type(i) is int and 0 < i < len(blocks) and blocks[i].prev_free_block is not None):
                raise BlockChoiceError(f"eviction policy {self.eviction.describe()!r} chose block {i!r}, which is not a free "
                                       f"block of this pool")
        if len(ids) > k:
            raise BlockChoiceError(f"eviction policy {self.eviction.describe()!r} chose {len(ids)} victims, {k} were asked for")
        if len(ids) < k:  # free blocks no index covers (uncached ones vLLM appended): vLLM's order
            seen = set(ids) | set(self.fronted)
            for block in vllm_glue.free_queue_front(self.pool):
                if len(ids) == k:
                    break
                if block.block_id not in seen:
                    ids.append(block.block_id)
        self.victims += ids
        return ids


class BlockChooser:
    """Called by the free queue's ``popleft_n``: one allocator choice, checked."""

    def __init__(self, pool: BlockPool, scheduler, allocator: BlockAllocator) -> None:
        self.pool, self.scheduler, self.allocator = pool, scheduler, allocator
        self.eviction = allocator.eviction_policy
        self.free = FreeBlocks(pool, self.eviction)

    def __call__(self, n: int, manager, request_id: str | None) -> list[KVCacheBlock]:
        if manager is None:
            alloc = Allocation(None, None, n)
        else:
            alloc = Allocation(self.scheduler.requests.get(request_id), request_id, n,
                               vllm_glue.held_blocks(manager, request_id), vllm_glue.group_of(manager))
        free = self.free
        free.victims, free.fronted = [], []
        ids = self.allocator.choose(free, alloc)
        return self.check(ids if type(ids) is list else list(ids or ()), alloc)

    def check(self, ids: Sequence[int], alloc: Allocation) -> list[KVCacheBlock]:
        """The chosen blocks, if ``ids`` are ``alloc.num_blocks`` distinct free blocks (and every eviction
        victim is among them); else a BlockChoiceError saying what is wrong, before anything changed."""
        blocks, n = self.pool.blocks, len(ids)
        out = [blocks[i] for i in ids if type(i) is int and 0 < i < len(blocks) and blocks[i].prev_free_block is not None]
        if len(out) == n == alloc.num_blocks and (n == 1 or len(set(ids)) == n) and not self.unused_victims(ids):
            return out
        self.explain(ids, alloc)

    def unused_victims(self, ids: Sequence[int]) -> list[int]:
        victims = self.free.victims
        return sorted(set(victims) - set(ids)) if victims else []

    def explain(self, ids: Sequence[int], alloc: Allocation) -> NoReturn:
        """Raise the BlockChoiceError that says what is wrong with ``ids``."""
        who = f"allocator {self.allocator.describe()!r}"
        blocks, n = self.pool.blocks, alloc.num_blocks
        if len(ids) != n:
            raise BlockChoiceError(f"{who} chose {len(ids)} blocks for {alloc}, which needs {n}")
        for block_id in ids:
            if not (type(block_id) is int and 0 < block_id < len(blocks)):
                what = ("the null block" if block_id == 0 else f"not a Python int (a {type(block_id).__name__})"
                        if type(block_id) is not int else f"not a block id of this pool (1..{len(blocks) - 1})")
                raise BlockChoiceError(f"{who} chose block {block_id!r} for {alloc}: {what}")
            block = blocks[block_id]
            if block.prev_free_block is None:
                raise BlockChoiceError(f"{who} chose block {block_id} for {alloc}, which is not free (ref_cnt={block.ref_cnt})")
        if n > 1 and len(set(ids)) != n:
            dup = next(i for i in ids if ids.count(i) > 1)
            raise BlockChoiceError(f"{who} chose block {dup} twice for {alloc}")
        unused = self.unused_victims(ids)
        raise BlockChoiceError(f"{who} asked the eviction policy {self.eviction.describe()!r} for victims "
                               f"{unused} and did not use them (every id evict() returns must be chosen)")

    def on_join(self, blocks: list[KVCacheBlock], at_cached_end: bool) -> None:
        self.allocator.on_free(blocks)
        if at_cached_end:  # placement indexes the uncached blocks, eviction the cached ones: disjoint
            cached = [b for b in blocks if b.block_hash is not None]
            if cached:
                self.eviction.on_free(cached)


def install_allocator(pool: BlockPool, allocator: BlockAllocator, scheduler) -> None:
    """Bind ``allocator`` to the live ``pool``. An allocator that keeps vLLM's choice and eviction
    (``default``) leaves vLLM's code untouched; any other gets the checked choice path."""
    if callable(getattr(type(allocator), "take", None)):
        raise TypeError(
            f"allocator {allocator.describe()!r} overrides take(pool, n), the v1 allocator API: "
            "rename it to choose(self, free, alloc) and return alloc.num_blocks free block ids instead of "
            "removing blocks from pool.free_block_queue (the pool now unlinks them); an index of free ids "
            "belongs in on_free(blocks). See docs/writing-a-policy.md, 'A block allocator'."
        )
    allocator.bind(pool, scheduler)
    if allocator.replaces_pool:
        chooser = BlockChooser(pool, scheduler, allocator)
        free_now = list(vllm_glue.free_queue_front(pool))
        vllm_glue.install_choice(pool, scheduler, chooser, chooser.on_join, chooser.eviction.on_hit)
        allocator.on_free(free_now)  # the initial free blocks, so indexes start complete
        chooser.eviction.on_free([b for b in free_now if b.block_hash is not None])


class IdHeap:
    """Free block ids, lowest (or highest) first, with lazy deletion: an id is pushed when its block
    becomes free and checked when popped. Each id is in the heap at most once."""

    __slots__ = ("heap", "members", "sign")

    def __init__(self, highest_first: bool = False) -> None:
        self.heap: list[int] = []
        self.members: set[int] = set()
        self.sign = -1 if highest_first else 1

    def push_all(self, ids: Iterable[int]) -> None:
        members, heap, sign = self.members, self.heap, self.sign
        for i in ids:
            if i not in members:
                members.add(i)
                heapq.heappush(heap, sign * i)

    def pop(self, k: int, ok: Callable[[int], bool]) -> list[int]:
        """Up to ``k`` ids, lowest (highest) first, for which ``ok(id)`` holds; others are dropped
        (a dropped id is pushed again when its block is freed again)."""
        out, heap, members, sign = [], self.heap, self.members, self.sign
        while heap and len(out) < k:
            i = sign * heapq.heappop(heap)
            members.discard(i)
            if ok(i):
                out.append(i)
        return out
