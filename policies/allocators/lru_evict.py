"""vLLM's placement and LRU eviction, written out on the allocator API: recently freed uncached
blocks first (vLLM's free-queue order), then cached-but-free blocks whose last release is oldest
(O'Neil et al.'s LRU baseline, SIGMOD'93). It hands out the same block ids as ``default`` but runs
through schedlab's checked choice path; it is the readable baseline that ``fifo_evict`` differs
from in one line."""

from policies.base import BlockAllocator


class LRUEvictAllocator(BlockAllocator):
    name = "lru_evict"
    eviction = "lru"

    def choose(self, free, alloc):
        ids = free.front_uncached(alloc.num_blocks)
        return ids + free.evict(alloc.num_blocks - len(ids))
