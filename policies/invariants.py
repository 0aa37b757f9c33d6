"""Checked mode: verify the BlockPool after every scheduler step (opt-in, O(num_blocks) per step).

Invariants every allocator must keep (see docs/writing-a-policy.md):
1. the null block (id 0) is ``pool.null_block``, flagged ``is_null``, never cached, never in the free queue;
2. every ``ref_cnt`` is >= 0;
3. a block is in the free queue iff its ``ref_cnt`` is 0 (so no block is both free and owned),
   and each block a request owns has ``ref_cnt`` >= the number of references requests hold on it,
   counted the way vLLM counts them (``vllm_glue.referenced_blocks``: only this pool's managers, HiSparse
   residency and unpinned pages as vLLM sees them; every queue's requests);
4. the free queue is a well-formed list whose length equals ``num_free_blocks``;
5. the prefix-cache maps agree: every ``hash -> block`` entry points at a block carrying that hash,
   and every block carrying a hash is findable under it.
"""

from __future__ import annotations

from collections import Counter

from vllm.v1.core.block_pool import BlockPool

from policies import vllm_glue


class AllocatorInvariantError(AssertionError):
    """The BlockPool became inconsistent; the message names the allocator and the invariant."""


def check_block_pool(pool: BlockPool, owned: Counter[int], allocator_name: str, where: str = "") -> None:
    """Raise AllocatorInvariantError if ``pool`` breaks an invariant. ``owned``: block id -> number
    of requests holding it (from the KV cache managers)."""

    def fail(msg: str) -> None:
        raise AllocatorInvariantError(f"allocator {allocator_name!r} broke an invariant{where}: {msg}")

    null = pool.null_block
    if null is not pool.blocks[0] or not null.is_null:
        fail("null block: block 0 is not the pool's null block")
    if null.block_hash is not None or null.prev_free_block is not None or null.next_free_block is not None:
        fail("null block: block 0 was cached or put in the free queue")

    queue = pool.free_block_queue
    in_queue: set[int] = set()
    prev, block = queue.fake_free_list_head, queue.fake_free_list_head.next_free_block
    while block is not queue.fake_free_list_tail:
        if block is None or block.prev_free_block is not prev:
            fail("free queue: broken links")
        if block.block_id in in_queue:
            fail(f"free queue: block {block.block_id} appears twice")
        in_queue.add(block.block_id)
        prev, block = block, block.next_free_block
    if len(in_queue) != queue.num_free_blocks:
        fail(f"free count: num_free_blocks={queue.num_free_blocks} but the free queue holds {len(in_queue)} blocks")

    for b in pool.blocks[1:]:
        if b.ref_cnt < 0:
            fail(f"ref count: block {b.block_id} has ref_cnt={b.ref_cnt}")
        free = b.block_id in in_queue
        if free and owned[b.block_id]:
            fail(f"block {b.block_id} is both free (in the free queue) and referenced by {owned[b.block_id]} request block table(s)")
        if free != (b.ref_cnt == 0):
            fail(f"block {b.block_id} has ref_cnt={b.ref_cnt} but is {'in' if free else 'not in'} the free queue")
        if b.ref_cnt < owned[b.block_id]:
            fail(f"ref count: block {b.block_id} has ref_cnt={b.ref_cnt} < {owned[b.block_id]} references held by requests")

    for key, blocks in pool.cached_block_hash_to_block._cache.items():
        for b in blocks.values() if isinstance(blocks, dict) else (blocks,):
            if b.block_hash != key and key not in pool.cached_block_hashes_by_block.get(b.block_id, ()):
                fail(f"hash map: an entry points at block {b.block_id}, which does not carry that hash")
    for b in pool.blocks:
        if b.block_hash is not None and not pool.cached_block_hash_to_block.contain(b.block_hash, b.block_id):
            fail(f"hash map: block {b.block_id} carries a hash under which the prefix cache does not find it")


def owned_blocks(scheduler) -> Counter[int]:
    """Block id -> references requests hold on it in the scheduler's (GPU) BlockPool, over all KV cache
    groups, counted as vLLM counts them (null block excluded)."""
    pool = scheduler.kv_cache_manager.block_pool
    return Counter(block.block_id for _, block in vllm_glue.referenced_blocks(scheduler, pool))
