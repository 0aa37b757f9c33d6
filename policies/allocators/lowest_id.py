"""Pack into the lowest free block ids (the classic first-fit placement of memory allocators,
Knuth TAOCP vol. 1 §2.5). Uncached free blocks are preferred, lowest id first; only when they run
out are cached-but-free blocks evicted, in vLLM's LRU order, so prefix-cache hits are not traded for
packing. Keeps the used region of the KV cache dense (useful for fragmentation/locality studies)."""

from policies.base import BlockAllocator, iter_free_blocks


class LowestIdAllocator(BlockAllocator):
    name = "lowest_id"

    def take(self, pool, num_blocks):
        chosen = []
        for block in pool.blocks[1:]:  # id order; block 0 is the null block
            if len(chosen) == num_blocks:
                break
            if block.prev_free_block is not None and block.block_hash is None:  # linked in the free queue
                chosen.append(block)
        if len(chosen) < num_blocks:
            taken = {b.block_id for b in chosen}
            for block in iter_free_blocks(pool):  # cached ones, least recently used first
                if len(chosen) == num_blocks:
                    break
                if block.block_id not in taken:
                    chosen.append(block)
        for block in chosen:
            pool.free_block_queue.remove(block)
        return chosen
