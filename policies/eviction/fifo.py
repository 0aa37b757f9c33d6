"""First in, first out: a cached block's place in the eviction order is fixed when its content is
first released, and a prefix-cache hit does not refresh it (FIFO replacement, Belady, IBM Sys. J.
1966). Compare with ``lru``: hot shared prefixes survive under LRU but age out under FIFO."""

import heapq
import itertools

from policies.base import EvictionPolicy


class FIFO(EvictionPolicy):
    name = "fifo"

    def __init__(self) -> None:
        self.clock = itertools.count()
        self.stamp: dict[int, int] = {}       # block id -> first release of its current content
        self.content: dict[int, object] = {}  # block id -> the hash it was stamped with
        self.queued: dict[int, int] = {}      # block id -> stamp of its entry in the heap
        self.heap: list[tuple[int, int]] = []

    def on_free(self, blocks):
        for block in blocks:
            i = block.block_id
            if i not in self.stamp or self.content[i] != block.block_hash:  # new content
                self.stamp[i], self.content[i] = next(self.clock), block.block_hash
            s = self.stamp[i]
            if self.queued.get(i) != s:
                self.queued[i] = s
                heapq.heappush(self.heap, (s, i))

    def evict(self, free, k):
        out, heap = [], self.heap
        while heap and len(out) < k:
            s, i = heapq.heappop(heap)
            if self.queued.get(i) != s:
                continue  # superseded by an entry for newer content
            del self.queued[i]
            if free.is_free(i):  # else it was hit since; its next release re-enters it, same stamp
                out.append(i)
        return out
