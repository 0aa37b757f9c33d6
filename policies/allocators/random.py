"""Uniformly random free blocks from a seeded generator: the "no placement policy" baseline for
ablations (any placement effect must beat random). Cached-but-free blocks are candidates like any
other, so this also evicts at random (cf. random replacement, Belady, IBM Sys. J. 1966) and ignores
the eviction policy. Free ids sit in an array (initially in id order; a freed block is appended) and
each draw takes ``array[randbelow(len)]`` and moves the last id into its place, so a choice is O(n)."""

import random

from policies.base import BlockAllocator


class RandomAllocator(BlockAllocator):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids: list[int] = []         # free ids (and ids hit since they were freed: dropped on draw)
        self.slot: dict[int, int] = {}   # id -> index in self.ids

    def on_free(self, blocks):
        ids, slot = self.ids, self.slot
        for block in blocks:
            if block.block_id not in slot:
                slot[block.block_id] = len(ids)
                ids.append(block.block_id)

    def draw(self, index: int) -> int:
        ids, slot = self.ids, self.slot
        block_id, last = ids[index], ids.pop()
        del slot[block_id]
        if last != block_id:
            ids[index], slot[last] = last, index
        return block_id

    def choose(self, free, alloc):
        out, below = [], self.rng._randbelow
        while len(out) < alloc.num_blocks and self.ids:
            block_id = self.draw(below(len(self.ids)))
            if free.is_free(block_id):
                out.append(block_id)
        return out
