"""Eviction policies on vLLM 0.32's real Scheduler / BlockPool (in-process, prefix caching on):
which cached-but-free blocks a request that finds no uncached free block reuses, in which order."""

from __future__ import annotations

import random

import pytest
from vllm.v1.core.sched.scheduler import Scheduler

import policies
from policies.base import EvictionPolicy
from policies.block_pool import BlockChoiceError
from policies.driver import run, step
from policies.inprocess import make_request, make_scheduler
from serving.models import write_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def tokens(seed, n):
    rng = random.Random(seed)
    return [rng.randint(3, 500) for _ in range(n)]


def victims(model_dir, allocator="default", eviction=None, scheduler_cls=None):
    """8 usable blocks of 16 tokens, all cached-but-free after these one-token requests (block ids by
    vLLM's placement: the free queue starts in id order and no uncached block is ever freed):
    B (32 tokens: B0=1, B1=2), A (A0=3, A1=4), A+X (hits A0, A1; X0=5), A+Y (hits them again; Y0=6),
    D (D0=7, D1=8). vLLM frees a request's blocks tail first, so the releases run
    B1 B0 | A1 A0 | X0 A1 A0 | Y0 A1 A0 | D1 D0. Then C (80 tokens, no hit) needs 5 blocks: all evictions.
    Returns C's block ids (first victim first)."""
    kw = dict(num_blocks=9, max_num_seqs=4, max_num_batched_tokens=256)
    if scheduler_cls is not None:
        sched = make_scheduler(model_dir, scheduler_cls=scheduler_cls, **kw)
    else:
        args = {"eviction": eviction} if eviction else None
        sched = make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(), **kw,
                               additional_config=policies.schedlab_config(allocator=allocator, allocator_args=args,
                                                                          check_invariants=True))
    a, b, d = tokens(1, 32), tokens(2, 32), tokens(3, 32)
    for rid, prompt in [("B", b), ("A", a), ("AX", a + tokens(4, 16)), ("AY", a + tokens(5, 16)), ("D", d)]:
        run(sched, [make_request(rid, prompt, 1)])
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == 8
    sched.add_request(make_request("C", tokens(6, 80), 1))
    return list(step(sched).scheduled_new_reqs[0].block_ids[0])


# by hand, with B0=1 B1=2 A0=3 A1=4 X0=5 Y0=6 D0=7 D1=8:
EXPECTED = {
    # last release: B1 B0 X0 Y0 A1 A0 D1 D0
    "lru": [2, 1, 5, 6, 4],
    # first release of the content (hits do not refresh): B1 B0 A1 A0 X0 Y0 D1 D0
    "fifo": [2, 1, 4, 3, 5],
    # hits: A0, A1 twice, the rest never; ties by last release: B1 B0 X0 Y0 D1 D0, then A1 A0
    "lfu": [2, 1, 5, 6, 8],
    # H = 1 + hits (A: 3, others 1); ties deeper first: X0, Y0 (48 prefix tokens), B1, D1 (32; B1
    # released first), B0, D0 (16)
    "shared_prefix": [5, 6, 2, 8, 1],
}


def test_lru_is_stock_vllms_order(model_dir):
    assert victims(model_dir, scheduler_cls=Scheduler) == EXPECTED["lru"]


@pytest.mark.parametrize("eviction", sorted(EXPECTED))
@pytest.mark.parametrize("allocator", ["default", "lowest_id", "lifetime"])
def test_eviction_order(model_dir, allocator, eviction):
    assert victims(model_dir, allocator, eviction) == EXPECTED[eviction]


def test_fifo_evict_and_lru_evict_allocators_keep_their_eviction(model_dir):
    assert victims(model_dir, "fifo_evict") == EXPECTED["fifo"]
    assert victims(model_dir, "lru_evict") == EXPECTED["lru"]
    assert victims(model_dir, "fifo_evict", "lfu") == EXPECTED["lfu"]  # allocator_args override


@pytest.mark.parametrize("eviction, a_hit", [("shared_prefix", 16), ("lfu", 32)])
def test_shared_prefix_ages_out_blocks_that_were_hot_long_ago(model_dir, eviction, a_hit):
    """A's blocks were hit twice (GreedyDual H = 1 + 2 = 3, L = 0). By hand, 8 usable blocks:
    A0=1 A1=2, X0=3 Y0=4 (H 1); E (6 blocks) takes 5..8 and evicts X0, Y0: L = 1, E's blocks come
    back with H = 2; F (6 blocks) evicts all of E's: L = 2, F's come back with H = 3, tied with A's;
    G (5 blocks) takes the deepest first: F's 96, 80, 64, 48-token blocks, then A1 (32 tokens,
    released before F1). So A's prefix keeps only A0 (16 tokens). LFU never evicts A (2 hits) while
    blocks without hits are free: A keeps both blocks (32 tokens)."""
    sched = make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(), num_blocks=9, max_num_seqs=4,
                           max_num_batched_tokens=256, additional_config=policies.schedlab_config(
                               allocator_args={"eviction": eviction}, check_invariants=True))
    a = tokens(1, 32)
    for rid, prompt in [("A", a), ("AX", a + tokens(4, 16)), ("AY", a + tokens(5, 16)),
                        ("E", tokens(7, 96)), ("F", tokens(8, 96)), ("G", tokens(9, 80))]:
        run(sched, [make_request(rid, prompt, 1)])
    assert sched.kv_cache_manager.get_computed_blocks(make_request("probe", a + [7], 1))[1] == a_hit


class EvictsTheNullBlock(EvictionPolicy):
    """Deliberately broken: names block 0 as its victim."""

    def evict(self, free, k):
        return [0] * k


def test_a_bad_victim_is_an_error_naming_the_eviction_policy(model_dir):
    with pytest.raises(BlockChoiceError, match=rf"eviction policy '{__name__}\.EvictsTheNullBlock' chose block 0"):
        victims(model_dir, eviction=f"{__name__}.EvictsTheNullBlock")
