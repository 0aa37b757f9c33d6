"""First-in-first-out eviction of cached blocks: a cached block's place in the eviction order is
fixed when it first becomes evictable, and a prefix-cache hit does not refresh it (FIFO
replacement, Belady, IBM Sys. J. 1966). Compare with ``lru_evict``: hot shared prefixes survive
under LRU but age out under FIFO."""

from policies.allocators.lru_evict import LRUEvictAllocator


class FIFOEvictAllocator(LRUEvictAllocator):
    name = "fifo_evict"

    def __init__(self) -> None:
        super().__init__()
        self.cached_as: dict[int, object] = {}  # block id -> the hash it was stamped with

    def on_free(self, blocks):
        for block in blocks:
            # Stamp only when the block's content is new (first release, or reused for other data).
            if block.block_hash is None or self.cached_as.get(block.block_id) != block.block_hash:
                self.stamp[block.block_id] = next(self.clock)
                self.cached_as[block.block_id] = block.block_hash
