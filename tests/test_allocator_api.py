"""The allocator API on vLLM 0.32's real Scheduler / KVCacheManager / BlockPool (in-process): the
allocator is told the request, only chooses ids, and a bad choice is an error that leaves the pool
intact. Expected block ids are derived by hand in the comments."""

from __future__ import annotations

import random

import pytest

import policies
from policies.allocators.lowest_id import LowestIdAllocator
from policies.block_pool import BlockChoiceError
from policies.driver import run, step
from policies.inprocess import make_request
from serving.models import write_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def sched_for(model_dir, allocator, allocator_args=None, **kw):
    from policies.inprocess import make_scheduler

    return make_scheduler(
        model_dir, scheduler_cls=policies.scheduler_class(),
        additional_config=policies.schedlab_config("fcfs", None, allocator, allocator_args, check_invariants=True), **kw,
    )


def tokens(seed, n):
    rng = random.Random(seed)
    return [rng.randint(3, 500) for _ in range(n)]


def new_block_ids(so):
    out = {r.req_id: list(r.block_ids[0]) for r in so.scheduled_new_reqs}
    cached = so.scheduled_cached_reqs
    for rid, new in zip(cached.req_ids, cached.new_block_ids):
        if new is not None and new[0]:
            out[rid] = list(new[0])
    return out


class Recording(LowestIdAllocator):
    """lowest_id that records what it was told about each allocation."""

    seen: list = []

    def choose(self, free, alloc):
        Recording.seen.append((alloc.request_id, alloc.tenant, alloc.num_blocks, alloc.first_block_index,
                               alloc.is_prefill, alloc.request is not None and alloc.request.request_id == alloc.request_id))
        return super().choose(free, alloc)


def test_allocator_is_told_request_tenant_position_and_phase(model_dir):
    Recording.seen = []
    sched = sched_for(model_dir, f"{__name__}.Recording", num_blocks=32, max_num_batched_tokens=16,
                      max_num_seqs=4, enable_prefix_caching=False)
    # a: 20-token prompt, 14 output tokens -> 34 tokens = 3 blocks of 16; chunked prefill of 16 tokens/step
    run(sched, [make_request("a", tokens(0, 20), 14, extra_args={"tenant": "T"})])
    assert Recording.seen == [
        ("a", "T", 1, 0, True, True),   # chunk 1: tokens 0-15 -> block 0 of a's table
        ("a", "T", 1, 1, True, True),   # chunk 2: tokens 16-19 -> block 1
        ("a", "T", 1, 2, False, True),  # decode: the 33rd token (index 32) needs block 2
    ]


def test_prefix_cache_hits_stay_vllms(model_dir):
    Recording.seen = []
    sched = sched_for(model_dir, f"{__name__}.Recording", num_blocks=32)
    shared = tokens(1, 32)
    run(sched, [make_request("a", shared + tokens(2, 8), 1)])       # 3 blocks: ids 1, 2, 3
    sched.add_request(make_request("b", shared + tokens(3, 20), 1))  # hits a's 2 full blocks, needs 2 more
    so = step(sched)
    assert Recording.seen[-1] == ("b", "default", 2, 2, True, True)
    # b's table: the 2 hit blocks (1, 2; vLLM's), then the 2 lowest uncached free ids: a's freed
    # uncached tail block 3 and 4
    assert so.scheduled_new_reqs[0].block_ids[0] == [1, 2, 3, 4]


class Chooses(LowestIdAllocator):
    """lowest_id, except that its first choice is ``bad`` (set by the test)."""

    bad: list = []

    def choose(self, free, alloc):
        return list(Chooses.bad) if Chooses.bad else super().choose(free, alloc)


@pytest.mark.parametrize("bad, message", [
    ([1, 2, 3], r"chose block 1 .*which is not free \(ref_cnt=1\)"),   # 1, 2 hold r0's prompt
    ([0, 5, 6], r"chose block 0 .*the null block"),
    ([5, 5, 6], r"chose block 5 twice"),
    ([5, 6], r"chose 2 blocks .*which needs 3"),
    ([5, 6, 99], r"chose block 99 .*not a block id of this pool \(1\.\.31\)"),
])
def test_a_bad_choice_is_an_error_naming_allocator_and_block_and_changes_nothing(model_dir, bad, message):
    Chooses.bad = []
    sched = sched_for(model_dir, f"{__name__}.Chooses", num_blocks=32)
    sched.add_request(make_request("r0", tokens(4, 20), 30))  # blocks 1, 2
    step(sched)
    pool = sched.kv_cache_manager.block_pool
    free_before = pool.get_num_free_blocks()
    Chooses.bad = bad
    sched.add_request(make_request("r1", tokens(5, 40), 1))  # needs 3 blocks
    with pytest.raises(BlockChoiceError, match=rf"allocator '{__name__}\.Chooses' {message}"):
        step(sched)
    assert pool.get_num_free_blocks() == free_before
    sched.check_invariants()  # the pool is as it was


def test_tenant_partition_keeps_tenants_in_their_regions_then_borrows(model_dir):
    # 17 blocks: null block 0, then A owns ids 1..8 and B owns 9..16
    sched = sched_for(model_dir, "tenant_partition", {"tenants": ["A", "B"]}, num_blocks=17,
                      max_num_batched_tokens=512, enable_prefix_caching=False)
    for rid, t, n in [("a0", "A", 20), ("b0", "B", 40), ("a1", "A", 20)]:
        sched.add_request(make_request(rid, tokens(hash(rid) % 100, n), 8, extra_args={"tenant": t}))
    assert new_block_ids(step(sched)) == {"a0": [1, 2], "b0": [9, 10, 11], "a1": [3, 4]}
    assert sched.schedlab_allocator.regions() == {"A": range(1, 9), "B": range(9, 17)}
    # A's 7-block request: its region's free ids 5..8, then the lowest free ids of B's region
    sched.add_request(make_request("a2", tokens(7, 100), 1, extra_args={"tenant": "A"}))
    assert new_block_ids(step(sched))["a2"] == [5, 6, 7, 8, 12, 13, 14]


def test_tenant_partition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tenant_partition: tenants must be a non-empty list"):
        policies.load_allocator("tenant_partition", {"tenants": []})
    with pytest.raises(ValueError, match="shares must be 2 positive numbers"):
        policies.load_allocator("tenant_partition", {"tenants": ["A", "B"], "shares": [1]})


def test_lifetime_packs_long_requests_from_the_top(model_dir):
    # 17 blocks (ids 1..16); long_tokens=100: hint 200 is long, hint 10 short, no hint -> max_tokens
    sched = sched_for(model_dir, "lifetime", {"long_tokens": 100}, num_blocks=17, max_num_batched_tokens=512,
                      enable_prefix_caching=False)
    reqs = [("s0", {"output_len_hint": 10}, 8), ("l0", {"output_len_hint": 200}, 8), ("s1", {}, 8), ("l1", {}, 150)]
    for i, (rid, xargs, max_tokens) in enumerate(reqs):
        sched.add_request(make_request(rid, tokens(i, 20), max_tokens, extra_args=xargs))
    assert new_block_ids(step(sched)) == {"s0": [1, 2], "l0": [16, 15], "s1": [3, 4], "l1": [14, 13]}


def test_unknown_eviction_policy_is_an_early_error_naming_it():
    with pytest.raises(ValueError, match=r"allocator 'lowest_id': unknown eviction policy 'mru'; known: fifo, lfu, lru, shared_prefix"):
        policies.schedlab_config(allocator="lowest_id", allocator_args={"eviction": "mru"})


def test_the_simulator_tells_the_allocator_the_request(model_dir):
    """The simulator drives the same PolicyScheduler: every request reaches the allocator with its
    tenant (from the trace) and starts at block index 0."""
    import dataclasses

    from simulator import EngineLimits, LinearModel, simulate
    from workloads.synthetic import synthetic

    trace = [dataclasses.replace(r, tenant="AB"[i % 2])
             for i, r in enumerate(synthetic(12, 50.0, prompt_len="uniform:20:100", output_len="uniform:1:20", seed=1))]
    Recording.seen = []
    simulate(trace, model_dir=model_dir, allocator=f"{__name__}.Recording", engine=EngineLimits(max_num_seqs=4),
             step_model=LinearModel(c0=2e-3, c1=20e-6, c2=100e-6, c3=0.0, num_gpu_blocks=128))
    first = {}
    for rid, tenant, _, index, prefill, has_request in Recording.seen:
        assert has_request
        first.setdefault(rid, (tenant, index, prefill))
    assert first == {r.request_id: (r.tenant, 0, True) for r in trace}
