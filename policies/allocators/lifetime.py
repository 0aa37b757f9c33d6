"""Lifetime-aware placement: requests expected to live long (output-length hint, else ``max_tokens``,
at least ``long_tokens``) take the highest free block ids, short-lived ones the lowest, so blocks
freed together lie together and long-lived blocks do not pin holes among short-lived ones (the idea
of lifetime-class segregation in memory allocators: Barrett & Zorn, "Using lifetime predictors to
improve memory allocation performance", PLDI'93; Maas et al., "Learning-based memory allocation for
C++ server workloads", ASPLOS'20). Cached-but-free blocks are evicted by the eviction policy only when
no uncached block is free. A request keeps its class for its decode growth."""

from __future__ import annotations

from policies.base import BlockAllocator, output_len_hint
from policies.block_pool import IdHeap


class LifetimeAllocator(BlockAllocator):
    name = "lifetime"

    def __init__(self, long_tokens: int = 256) -> None:
        if long_tokens < 1:
            raise ValueError(f"lifetime: long_tokens must be >= 1, got {long_tokens}")
        self.long_tokens = long_tokens
        self.low = IdHeap()                         # short-lived: lowest id first
        self.high = IdHeap(highest_first=True)        # long-lived: highest id first

    def is_long(self, request) -> bool:
        if request is None:
            return False
        hint = output_len_hint(request)
        return (hint if hint is not None else request.max_tokens) >= self.long_tokens

    def on_free(self, blocks):
        ids = [b.block_id for b in blocks if b.block_hash is None]
        self.low.push_all(ids)
        self.high.push_all(ids)

    def choose(self, free, alloc):
        heap = self.high if self.is_long(alloc.request) else self.low
        ids = heap.pop(alloc.num_blocks, free.is_uncached)
        return ids + free.evict(alloc.num_blocks - len(ids))
