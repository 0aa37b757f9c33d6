"""``PolicyBlockPool``: vLLM's BlockPool with the choice of free blocks delegated to a BlockAllocator.

The live pool is referenced from the KV cache coordinator, every single-type manager and every
``KVCacheBlock.pool``, so ``install_allocator`` switches the existing object's ``__class__`` in place
instead of building a new pool. Only ``get_new_blocks`` (which blocks) and ``free_blocks`` (a
notification) change; hashing, ref counts and the free queue stay vLLM's.
"""

from __future__ import annotations

from collections.abc import Iterable

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from policies.base import BlockAllocator


class PolicyBlockPool(BlockPool):
    allocator: BlockAllocator

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
        ret = self.allocator.take(self, num_blocks)
        if self._reuse_watchers:
            self._notify_reuse(ret)
        for block in ret:  # as vLLM: a cached-but-free block is evicted when handed out
            if self.enable_caching:
                self._maybe_evict_cached_block(block)
            assert block.ref_cnt == 0, f"allocator {self.allocator.describe()!r} handed out block {block.block_id} with ref_cnt={block.ref_cnt}"
            block.ref_cnt += 1
            if self.metrics_collector:
                self.metrics_collector.on_block_allocated(block)
        return ret

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        ordered_blocks = list(ordered_blocks)
        super().free_blocks(ordered_blocks)
        released = [b for b in ordered_blocks if b.ref_cnt == 0 and not b.is_null and b.pool is self]
        if released:
            self.allocator.on_free(released)


def install_allocator(pool: BlockPool, allocator: BlockAllocator, scheduler) -> None:
    """Bind ``allocator`` to the live ``pool``; switch the pool's class only if the allocator needs it
    (so ``default`` runs vLLM's own code)."""
    allocator.bind(pool, scheduler)
    if allocator.replaces_pool:
        pool.__class__ = PolicyBlockPool
        pool.allocator = allocator
