"""Least frequently used: the cached block with the fewest prefix-cache hits since its content was
written is reused first; ties go to the one released longest ago (LFU with LRU tie-breaking, cf.
Lee et al., "LRFU", IEEE Trans. Computers 2001, for the spectrum between the two). Without aging, a
prefix that was hot once stays cached; ``shared_prefix`` ages."""

import heapq
import itertools

from policies.base import EvictionPolicy


class LFU(EvictionPolicy):
    name = "lfu"

    def __init__(self) -> None:
        self.clock = itertools.count()
        self.hits: dict[int, int] = {}
        self.content: dict[int, object] = {}  # block id -> the hash its hits were counted for
        self.entry: dict[int, int] = {}       # block id -> clock of its current heap entry
        self.heap: list[tuple[int, int, int]] = []  # (hits, release clock, block id)

    def count(self, block) -> int:
        i = block.block_id
        if self.content.get(i) != block.block_hash:
            self.content[i], self.hits[i] = block.block_hash, 0
        return self.hits[i]

    def on_hit(self, blocks):
        for block in blocks:
            self.hits[block.block_id] = self.count(block) + 1

    def on_free(self, blocks):
        for block in blocks:
            t = next(self.clock)
            self.entry[block.block_id] = t
            heapq.heappush(self.heap, (self.count(block), t, block.block_id))

    def evict(self, free, k):
        out, heap = [], self.heap
        while heap and len(out) < k:
            _, t, i = heapq.heappop(heap)
            if self.entry.get(i) == t:
                del self.entry[i]
                if free.is_free(i):
                    out.append(i)
        return out
