"""Pack into the lowest free block ids (the classic first-fit placement of memory allocators,
Knuth TAOCP vol. 1 §2.5). Uncached free blocks are preferred, lowest id first; only when they run
out are cached-but-free blocks evicted, in the eviction policy's order (vLLM's LRU by default), so
prefix-cache hits are not traded for packing. Keeps the used region of the KV cache dense (useful for
fragmentation/locality studies). A heap of free ids keeps a choice at O(n log N)."""

from policies.base import BlockAllocator
from policies.block_pool import IdHeap


class LowestIdAllocator(BlockAllocator):
    name = "lowest_id"

    def __init__(self) -> None:
        self.uncached = IdHeap()

    def on_free(self, blocks):
        self.uncached.push_all(b.block_id for b in blocks if b.block_hash is None)

    def choose(self, free, alloc):
        ids = self.uncached.pop(alloc.num_blocks, free.is_uncached)
        return ids + free.evict(alloc.num_blocks - len(ids))
