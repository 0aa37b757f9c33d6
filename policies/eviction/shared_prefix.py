"""Cost-aware eviction for a prefix cache: GreedyDual (Young, Algorithmica 1994; Cao & Irani,
USENIX ITS 1997) where the cost of evicting a block is the number of requests that shared it.

Each cached free block gets the priority ``H = L + requests`` (``requests`` = 1 + its prefix-cache
hits since its content was written); the lowest ``H`` is reused first and ``L`` rises to the ``H`` of
every victim, so blocks that were shared long ago age out (unlike ``lfu``). Ties go to the block
deeper in its prefix (more prefix tokens) and then to the one released first: a deeper block is
never hit more often than the blocks before it in its prefix, so leaves go first and shared prefixes
stay whole, as in SGLang's radix-tree cache (Zheng et al., NeurIPS 2024)."""

import heapq

from policies.base import EvictionPolicy
from policies.eviction.lfu import LFU


class SharedPrefix(LFU):
    name = "shared_prefix"

    def __init__(self) -> None:
        super().__init__()
        self.inflation = 0  # L
        self.heap: list[tuple[int, int, int, int]] = []  # (H, -prefix tokens, release clock, block id)

    def on_free(self, blocks):
        for block in blocks:
            t = next(self.clock)
            self.entry[block.block_id] = t
            priority = self.inflation + 1 + self.count(block)
            heapq.heappush(self.heap, (priority, -(block.block_hash_num_tokens or 0), t, block.block_id))

    def evict(self, free, k):
        out, heap = [], self.heap
        while heap and len(out) < k:
            priority, _, t, i = heapq.heappop(heap)
            if self.entry.get(i) == t:
                del self.entry[i]
                if free.is_free(i):
                    out.append(i)
                    self.inflation = priority
        return out

