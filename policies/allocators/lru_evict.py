"""Least-recently-used eviction of cached blocks, written out explicitly: uncached free blocks are
handed out first (vLLM's free-queue order), then cached-but-free blocks whose last release is
oldest (O'Neil et al.'s LRU baseline, SIGMOD'93). This is what vLLM's free queue implements
implicitly, so it hands out the same block ids as ``default``; it is the readable baseline that
``fifo_evict`` differs from in one line."""

import itertools

from policies.base import BlockAllocator, iter_free_blocks


class LRUEvictAllocator(BlockAllocator):
    name = "lru_evict"

    def __init__(self) -> None:
        self.stamp: dict[int, int] = {}  # block id -> eviction order (smaller goes first)
        self.clock = itertools.count()

    def on_free(self, blocks):
        for block in blocks:  # vLLM passes them in eviction order
            self.stamp[block.block_id] = next(self.clock)

    def take(self, pool, num_blocks):
        chosen, cached = [], []
        for block in iter_free_blocks(pool):
            if block.block_hash is None:
                chosen.append(block)
                if len(chosen) == num_blocks:
                    break
            else:
                cached.append(block)
        if len(chosen) < num_blocks:
            cached.sort(key=lambda b: self.stamp.get(b.block_id, -1))
            chosen += cached[: num_blocks - len(chosen)]
        for block in chosen:
            pool.free_block_queue.remove(block)
        return chosen
