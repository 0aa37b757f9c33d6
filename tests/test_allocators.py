"""KV block allocators on vLLM 0.32's real BlockPool / KVCacheManager / Scheduler (in-process)."""

from __future__ import annotations

import random

import pytest
from vllm.v1.core.sched.scheduler import Scheduler

import policies
from serving.models import write_model_dir
from policies.base import BlockAllocator
from policies.block_pool import PolicyBlockPool
from policies.driver import run, step
from policies.inprocess import make_request, make_scheduler
from policies.invariants import AllocatorInvariantError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def sched_for(model_dir, allocator="default", allocator_args=None, policy="fcfs", check=True, **kw):
    return make_scheduler(
        model_dir, scheduler_cls=policies.scheduler_class(),
        additional_config=policies.schedlab_config(policy, None, allocator, allocator_args, check_invariants=check), **kw,
    )


def tokens(seed, n):
    rng = random.Random(seed)
    return [rng.randint(3, 500) for _ in range(n)]


def req(rid, toks, max_tokens=1, arrival=0.0, **kw):
    return make_request(rid, toks, max_tokens, arrival_time=arrival, **kw)


def block_ids(sched, rid):
    return sched.kv_cache_manager.get_block_ids(rid)[0]


def step_block_ids(so):
    """Every block id handed out in a step, as vLLM's SchedulerOutput reports it."""
    out = {r.req_id: list(r.block_ids[0]) for r in so.scheduled_new_reqs}
    cached = so.scheduled_cached_reqs
    for rid, new in zip(cached.req_ids, cached.new_block_ids):
        out[rid] = list(new[0]) if new is not None else []
    return out


def random_workload(seed=1, n=60):
    """Shared prefixes (prefix-cache hits and evictions), tight memory (preemptions)."""
    rng = random.Random(seed)
    prefixes = [tokens(100 + i, 48) for i in range(4)]
    return [req(f"r{i}", rng.choice(prefixes)[: rng.choice([16, 32, 48])] + tokens(i, rng.randint(1, 40)),
                rng.randint(1, 40), arrival=float(i)) for i in range(n)]


MAX_STEPS = 5000  # the 60-request workload drains in 248 steps


def replay(sched, reqs, arrivals_per_step=3):
    """Add requests a few per step; return every step's block ids."""
    pending, steps = list(reqs), []
    for _ in range(MAX_STEPS):
        if not (pending or sched.has_requests()):
            return steps
        for _ in range(min(arrivals_per_step, len(pending))):
            sched.add_request(pending.pop(0))
        steps.append(step_block_ids(step(sched)))
    pytest.fail(f"scheduler not drained after {MAX_STEPS} steps: {len(pending)} requests never added")


@pytest.mark.parametrize("allocator, args", [("default", None), ("lru_evict", None),
                                            ("tenant_quota", {"quota_blocks": 10**6})])  # never refuses: same order
def test_equals_stock_vllm_step_by_step(model_dir, allocator, args):
    kw = dict(num_blocks=24, max_num_seqs=8, max_num_batched_tokens=96)
    stock = make_scheduler(model_dir, scheduler_cls=Scheduler, **kw)
    ours = sched_for(model_dir, allocator, args, **kw)
    expected = replay(stock, random_workload())
    assert replay(ours, random_workload()) == expected
    pool = ours.kv_cache_manager.block_pool
    assert (type(pool) is PolicyBlockPool) == (allocator == "lru_evict")  # only a take/on_free override swaps it


def test_workload_really_preempts_and_hits_prefix_cache(model_dir):
    sched = make_scheduler(model_dir, scheduler_cls=Scheduler, num_blocks=24, max_num_seqs=8, max_num_batched_tokens=96)
    pending, hits = random_workload(), 0
    reqs = list(pending)
    for _ in range(MAX_STEPS):
        if not (pending or sched.has_requests()):
            break
        for r in pending[:3]:
            hits += sched.kv_cache_manager.get_computed_blocks(r)[1]
            sched.add_request(r)
        del pending[:3]
        step(sched)
    else:
        pytest.fail(f"scheduler not drained after {MAX_STEPS} steps")
    assert sum(r.num_preemptions for r in reqs) > 0 and hits > 0


def two_freed_then_one(model_dir, allocator, args=None):
    """r0 (blocks 1,2) finishes first, then r1 (3,4); r3 then needs 3 blocks. No prefix caching."""
    sched = sched_for(model_dir, allocator, args, num_blocks=12, max_num_seqs=4, enable_prefix_caching=False)
    sched.add_request(req("r0", tokens(0, 20), 1))
    sched.add_request(req("r1", tokens(1, 20), 4))
    sched.add_request(req("r2", tokens(2, 20), 30))
    first = step_block_ids(step(sched))
    for _ in range(100):  # r1 needs 4 steps
        if "r1" not in sched.requests:
            break
        step(sched)
    else:
        pytest.fail(f"{allocator}: r1 (4 output tokens) not finished after 100 steps")
    sched.add_request(req("r3", tokens(3, 40), 1))
    for _ in range(100):  # r3 waits for r2's blocks at most
        if "r3" in (ids := step_block_ids(step(sched))):
            return first, ids["r3"]
    pytest.fail(f"{allocator}: r3 got no blocks within 100 steps")


def test_default_reuses_last_freed_first(model_dir):
    first, r3 = two_freed_then_one(model_dir, "default")
    assert first == {"r0": [1, 2], "r1": [3, 4], "r2": [5, 6]}
    assert r3 == [4, 3, 2]  # LIFO: r1 (freed last) before r0, each freed tail block first


def test_lowest_id_packs_into_lowest_free_ids(model_dir):
    first, r3 = two_freed_then_one(model_dir, "lowest_id")
    assert first == {"r0": [1, 2], "r1": [3, 4], "r2": [5, 6]}
    assert r3 == [1, 2, 3]


def test_random_is_seeded(model_dir):
    first, r3 = two_freed_then_one(model_dir, "random", {"seed": 0})
    rng, free, expected = random.Random(0), list(range(1, 12)), {}
    for rid in ("r0", "r1", "r2"):  # 2 blocks each: draw free[randbelow(len)], the last id fills the hole
        expected[rid] = []
        for _ in range(2):
            j = rng._randbelow(len(free))
            expected[rid].append(free[j])
            free[j] = free[-1]
            free.pop()
    assert first == expected
    assert two_freed_then_one(model_dir, "random", {"seed": 0}) == (first, r3)
    assert two_freed_then_one(model_dir, "random", {"seed": 1})[0] != first


def eviction_scenario(model_dir, allocator):
    """Prefix A cached, prefix B cached, A hit again; then a big request must evict two cached blocks."""
    sched = sched_for(model_dir, allocator, num_blocks=9, max_num_seqs=4)
    a, b = tokens(10, 32), tokens(11, 32)
    run(sched, [req("a", a)])
    run(sched, [req("b", b)])
    hit = req("a2", a + tokens(12, 1))
    assert sched.kv_cache_manager.get_computed_blocks(hit)[1] == 32
    run(sched, [hit])
    big = req("c", tokens(13, 96), 1)
    sched.add_request(big)
    so = step(sched)
    probe_a, probe_b = req("pa", a + [7]), req("pb", b + [7])
    hits = {name: sched.kv_cache_manager.get_computed_blocks(r)[1] for name, r in (("a", probe_a), ("b", probe_b))}
    return step_block_ids(so)["c"], hits


def test_lru_evicts_least_recently_used_prefix(model_dir):
    c_blocks, hits = eviction_scenario(model_dir, "lru_evict")
    assert hits == {"a": 32, "b": 0}
    assert (c_blocks, hits) == eviction_scenario(model_dir, "default")


def test_fifo_evicts_first_cached_prefix_despite_recent_hit(model_dir):
    c_blocks, hits = eviction_scenario(model_dir, "fifo_evict")
    assert hits == {"a": 0, "b": 32}
    assert c_blocks != eviction_scenario(model_dir, "lru_evict")[0]


def test_tenant_quota_caps_blocks_per_tenant(model_dir):
    def reqs():
        return [req(f"r{i}", tokens(i, 32), 8, arrival=float(i), extra_args={"tenant": t})
                for i, t in enumerate("AAAB")]
    free_for_all = run(sched_for(model_dir, "default", num_blocks=64, max_num_seqs=8), reqs())
    assert free_for_all.admitted_per_step[0] == ["r0", "r1", "r2", "r3"]
    capped = run(sched_for(model_dir, "tenant_quota", {"quota_blocks": 5}, num_blocks=64, max_num_seqs=8), reqs())
    assert capped.admitted_per_step[0] == ["r0", "r1", "r3"]  # A holds 3 (r0) + 2 (r1) blocks; r2 waits
    assert "r2" in sum(capped.admitted_per_step[1:], [])
    assert sorted(capped.finished) == ["r0", "r1", "r2", "r3"]


def test_tenant_quota_keeps_a_sorted_queue_order(model_dir):
    """With sjf, the per-tenant TenantQueue admits in sjf's order (a quota that never refuses)."""
    kw = dict(num_blocks=24, max_num_seqs=8, max_num_batched_tokens=96)
    expected = replay(sched_for(model_dir, "default", policy="sjf", **kw), random_workload())
    assert replay(sched_for(model_dir, "tenant_quota", {"quota_blocks": 10**6}, policy="sjf", **kw), random_workload()) == expected


def test_tenant_quota_closes_a_refused_tenant_for_the_step(model_dir):
    """A's big request is refused; A's small one behind it waits too (FIFO within a tenant) and is
    never even asked, while B behind both is admitted."""
    sched = sched_for(model_dir, "tenant_quota", {"quota_blocks": 4}, num_blocks=64, max_num_seqs=8)
    asked = []
    admit = sched.schedlab_allocator.admit
    sched.schedlab_allocator.admit = lambda r: asked.append(r.request_id) or admit(r)
    for i, (t, n) in enumerate([("A", 32), ("A", 48), ("A", 8), ("B", 32)]):
        sched.add_request(req(f"r{i}", tokens(i, n), 8, arrival=float(i), extra_args={"tenant": t}))
    so = step(sched)
    assert [r.req_id for r in so.scheduled_new_reqs] == ["r0", "r3"]
    assert asked == ["r0", "r1", "r3"]
    assert [r.request_id for r in sched.waiting] == ["r1", "r2"] and len(sched.waiting) == 2
    assert sched.waiting  # the tenant is open again next step


# ---- checked mode ----

class V1Allocator(BlockAllocator):
    """Written against the v1 API (take(pool, n) unlinking blocks itself)."""

    def take(self, pool, num_blocks):
        return pool.free_block_queue.popleft_n(num_blocks)


def test_a_v1_allocator_fails_saying_what_to_change(model_dir):
    with pytest.raises(TypeError, match=r"V1Allocator.*overrides take\(pool, n\).*choose\(self, free, alloc\)"):
        sched_for(model_dir, f"{__name__}.V1Allocator", num_blocks=16)


@pytest.mark.parametrize("allocator, args", [("default", None), ("lowest_id", None), ("random", {"seed": 3}),
                                            ("fifo_evict", None), ("lru_evict", None), ("tenant_quota", {"quota_blocks": 8}),
                                            ("tenant_partition", {"tenants": ["A", "B"]}), ("lifetime", {"long_tokens": 20}),
                                            ("lowest_id", {"eviction": "lfu"}), ("lowest_id", {"eviction": "shared_prefix"}),
                                            ("default", {"eviction": "fifo"})])
def test_builtins_keep_invariants_on_random_workload(model_dir, allocator, args):
    sched = sched_for(model_dir, allocator, args, num_blocks=24, max_num_seqs=8, max_num_batched_tokens=96)
    reqs = random_workload(seed=2, n=40)
    for r, t in zip(reqs, "ABCD" * 10):
        r.sampling_params.extra_args = {"tenant": t}
    replay(sched, reqs)  # checked mode: raises on any broken invariant after every step
    assert all(r.is_finished() for r in reqs)


def test_checker_detects_corruption_of_the_free_count(model_dir):
    sched = sched_for(model_dir, "default", num_blocks=16)
    sched.check_invariants()
    sched.kv_cache_manager.block_pool.free_block_queue.num_free_blocks -= 1
    with pytest.raises(AllocatorInvariantError, match="allocator 'default'.*free count"):
        sched.check_invariants()
