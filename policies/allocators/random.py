"""Uniformly random free blocks from a seeded generator: the "no placement policy" baseline for
ablations (any placement effect must beat random). Cached-but-free blocks are candidates like any
other, so this also evicts at random (cf. random replacement, Belady, IBM Sys. J. 1966)."""

import random

from policies.base import BlockAllocator, iter_free_blocks


class RandomAllocator(BlockAllocator):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def take(self, pool, num_blocks):
        chosen = self.rng.sample(list(iter_free_blocks(pool)), num_blocks)
        for block in chosen:
            pool.free_block_queue.remove(block)
        return chosen
