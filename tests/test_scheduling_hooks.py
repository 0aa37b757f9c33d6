"""Scheduling hooks of the policy API v2 on vLLM 0.32's real Scheduler (in-process) and in the
simulator: the clock, re-keying, proactive preemption, prefill limits, cached-prefix length.
Expected orders and victims are derived by hand in the comments."""

from __future__ import annotations

import pytest

import policies
from serving.models import write_model_dir
from policies.base import PolicyError, PrefillLimits, SchedulingPolicy
from policies.driver import SchedulerEvents, run, step
from policies.inprocess import make_request, make_scheduler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def sched_for(model_dir, policy, policy_args=None, **kw):
    kw.setdefault("max_num_seqs", 1)
    return make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(),
                          additional_config=policies.schedlab_config(policy, policy_args, check_invariants=True), **kw)


def req(i, prompt_len=16, max_tokens=2, served=0, prompt=None, **kw):
    r = make_request(f"r{i}", prompt or [3 + (i * 7 + j) % 500 for j in range(prompt_len)], max_tokens,
                     arrival_time=float(i), **kw)
    for _ in range(served):  # output tokens already generated (as a request preempted after them)
        r.append_output_token_ids(5)
    return r


def steps_until(sched, trace, cond, limit=200):
    for _ in range(limit):
        if cond():
            return
        step(sched, trace)
    raise AssertionError("condition not reached")


# ---- clock: now() / waited() ----

class Clocked(SchedulingPolicy):
    """Test policy: records now() and the waited() of every waiting request at each step."""
    seen: list = []

    def on_schedule(self, output):
        Clocked.seen.append((self.now(), {r.request_id: self.waited(r) for r in self.iter_waiting()}))


def test_now_is_the_schedulers_clock_and_waited_counts_from_arrival(model_dir):
    sched = sched_for(model_dir, f"{__name__}.Clocked")
    sched.clock = lambda: 100.0
    for i in (90, 95):
        sched.add_request(req(i, 16, 2))
    Clocked.seen = []
    step(sched)
    # r90 admitted (one slot); r95 still waits: 100 - 95 = 5 s
    assert Clocked.seen == [(100.0, {"r95": 5.0})]


def test_simulator_clock_is_virtual(model_dir):
    from simulator import EngineLimits, LinearModel, simulate
    from workloads.trace import Request
    Clocked.seen = []
    step_model = LinearModel(c0=1e-3, c1=0.0, c2=0.0, c3=0.0, num_gpu_blocks=64)
    trace = [Request("a", 0.0, 16, 3), Request("b", 0.0005, 16, 2)]
    simulate(trace, model_dir=model_dir, policy=f"{__name__}.Clocked", step_model=step_model,
             engine=EngineLimits(max_num_seqs=1))
    # 1 ms per step; b arrives at 0.5 ms and is seen from the second step on (t = 1 ms), waiting
    # until a's 3 tokens are done (steps at 0, 1, 2 ms), then admitted at 3 ms.
    nows = [t for t, _ in Clocked.seen]
    assert nows[:5] == pytest.approx([0.0, 1e-3, 2e-3, 3e-3, 4e-3])
    assert Clocked.seen[1][1] == pytest.approx({"b": 0.5e-3})
    assert Clocked.seen[2][1] == pytest.approx({"b": 1.5e-3})


# ---- dynamic ordering: LAS with aging ----

def las_order(model_dir, rekey_every):
    # Served output tokens: r0 5, r1 0, r2 2, r3 0 (arrivals 0, 1, 2, 3 s); one slot.
    # LAS: least served first -> r1 (0), r3 (0), r2 (2), r0 (5).
    # At t = 10.5 s (after r1 is admitted) r0 has waited 10.5 s > max_wait_s = 10: aged, it jumps
    # ahead of everyone -> r1, r0, r3, r2. Only if the waiting queue is re-keyed while r0 waits.
    sched = sched_for(model_dir, "las", {"max_wait_s": 10.0, "rekey_every": rekey_every})
    clock = [5.0]
    sched.clock = lambda: clock[0]
    for i, served in enumerate([5, 0, 2, 0]):
        sched.add_request(req(i, 16, served + 2, served=served))
    trace = SchedulerEvents()
    steps_until(sched, trace, lambda: trace.admitted)
    clock[0] = 10.5
    steps_until(sched, trace, lambda: not sched.has_requests())
    return trace.admitted


def test_las_orders_by_least_attained_service_and_aging_jumps_ahead(model_dir):
    assert las_order(model_dir, rekey_every=1) == ["r1", "r0", "r3", "r2"]


def test_las_without_rekeying_keeps_the_enqueue_time_keys(model_dir):
    assert las_order(model_dir, rekey_every=0) == ["r1", "r3", "r2", "r0"]


# ---- proactive preemption: FastServe ----

FASTSERVE_ARGS = {"num_levels": 3, "base_quantum": 4, "skip_join": False}


def fastserve_run(model_dir, policy):
    # Two slots; quanta: level 0 < 4 served tokens, level 1 < 4 + 8 = 12, level 2 after.
    # r0, r1 (16-token prompts) start together and gain one token per step: 5 each after step 5
    # (level 1). r2 arrives then (level 0). Step 6: no free slot and r2 (0) outranks the most
    # demoted running request (both level 1, r1 arrived later) -> r1 preempted, r2 admitted.
    # r0 reaches 12 tokens after step 12 (level 2); step 13: waiting r1 (level 1) outranks r0
    # (level 2), while r2 (7 tokens, level 1) does not -> r0 preempted, r1 resumed.
    sched = sched_for(model_dir, policy, FASTSERVE_ARGS, max_num_seqs=2, num_blocks=64)
    sched.add_request(req(0, 16, 40))
    sched.add_request(req(1, 16, 40))
    trace = SchedulerEvents()
    for _ in range(5):
        step(sched, trace)
    sched.add_request(req(2, 16, 40))
    for _ in range(8):
        step(sched, trace)
    return sched, trace


def test_fastserve_preempts_running_requests_for_higher_level_arrivals(model_dir):
    sched, trace = fastserve_run(model_dir, "fastserve")
    assert trace.admitted_per_step[0] == ["r0", "r1"]
    assert trace.admitted_per_step[5] == ["r2"] and trace.preempted[:1] == ["r1"]
    assert trace.admitted_per_step[6:12] == [[]] * 6
    assert trace.admitted_per_step[12] == ["r1"] and trace.preempted == ["r1", "r0"]
    # vLLM's own bookkeeping: the counter and the PREEMPTED events behind vllm:num_preemptions
    assert sched.requests["r1"].num_preemptions == sched.requests["r0"].num_preemptions == 1
    trace2 = run(sched)
    assert trace.preemption_events + trace2.preemption_events == 2
    assert sorted(trace2.finished) == ["r0", "r1", "r2"]


def test_mlfq_without_proactive_preemption_lets_the_arrival_wait(model_dir):
    _, trace = fastserve_run(model_dir, "mlfq")
    assert trace.preempted == [] and trace.admitted == ["r0", "r1"]


def test_fastserve_same_in_simulator(model_dir):
    """The same scenario on the simulator's virtual clock: 1 ms per step, r2 arrives at 4.5 ms,
    is added before step 6 (t = 5 ms) and gets its first token at the end of step 6 (6 ms)."""
    from simulator import EngineLimits, LinearModel, simulate
    from workloads.trace import Request
    step_model = LinearModel(c0=1e-3, c1=0.0, c2=0.0, c3=0.0, num_gpu_blocks=64)
    trace = [Request("r0", 0.0, 16, 40), Request("r1", 0.0, 16, 40), Request("r2", 4.5e-3, 16, 40)]
    kw = dict(model_dir=model_dir, policy_args=FASTSERVE_ARGS, step_model=step_model, engine=EngineLimits(max_num_seqs=2))
    res = simulate(trace, policy="fastserve", **kw)
    ttft = {r.request_id: r.ttft_s for r in res.records}
    assert ttft["r2"] == pytest.approx(1.5e-3)
    assert res.summary["server_num_preemptions"] >= 2 and res.num_preemptions >= 2
    base = simulate(trace, policy="mlfq", **kw)
    assert base.num_preemptions == 0
    # without proactive preemption r2 waits for r0/r1's 40 steps and gets its token in step 41
    assert {r.request_id: r.ttft_s for r in base.records}["r2"] == pytest.approx(41e-3 - 4.5e-3)


class BadVictim(SchedulingPolicy):
    """Test policy: names a waiting request as a victim."""

    def to_preempt(self):
        return list(self.iter_waiting())[:1]


def test_victim_that_is_not_running_is_an_error_naming_the_policy(model_dir):
    sched = sched_for(model_dir, f"{__name__}.BadVictim")
    for i in range(2):
        sched.add_request(req(i))
    with pytest.raises(PolicyError, match=r"BadVictim.*to_preempt\(\) returned 'r\d'.*not a running request"):
        for _ in range(3):
            step(sched)


# ---- prefill control: Sarathi-style budget ----

def scheduled_tokens(model_dir, args, reqs, n_steps):
    sched = sched_for(model_dir, "sarathi", args, max_num_seqs=4)
    for r in reqs:
        sched.add_request(r)
    return [dict(step(sched).num_scheduled_tokens) for _ in range(n_steps)]


def test_step_token_budget(model_dir):
    # 64 tokens per step: r0's 100-token prompt takes all of step 1; step 2: r0's last 36, r1 the
    # remaining 28; step 3: r0 decodes 1, r1 its last 12.
    got = scheduled_tokens(model_dir, {"token_budget": 64}, [req(0, 100, 8), req(1, 40, 8)], 3)
    assert got == [{"r0": 64}, {"r0": 36, "r1": 28}, {"r0": 1, "r1": 12}]


def test_chunk_tokens_caps_each_request(model_dir):
    # 32 tokens per request per step: r0 32/32/32/4 (100), r1 32/8 (40) then decodes.
    got = scheduled_tokens(model_dir, {"token_budget": 2048, "chunk_tokens": 32}, [req(0, 100, 8), req(1, 40, 8)], 4)
    assert got == [{"r0": 32, "r1": 32}, {"r0": 32, "r1": 8}, {"r0": 32, "r1": 1}, {"r0": 4, "r1": 1}]


def test_max_partial_prefills_admits_one_prefill_at_a_time(model_dir):
    # One prefill at a time, 32-token chunks: r0 (100) prefills over steps 1-4 while r1, r2 wait;
    # step 5 r1 starts (32 of 40), step 6 finishes it (8); r2 (20) only at step 7.
    args = {"token_budget": 2048, "chunk_tokens": 32, "max_partial_prefills": 1}
    got = scheduled_tokens(model_dir, args, [req(0, 100, 20), req(1, 40, 20), req(2, 20, 20)], 7)
    assert got == [{"r0": 32}, {"r0": 32}, {"r0": 32}, {"r0": 4}, {"r0": 1, "r1": 32}, {"r0": 1, "r1": 8},
                   {"r0": 1, "r1": 1, "r2": 20}]


def test_bad_prefill_limits_name_the_value():
    with pytest.raises(ValueError, match=r"chunk_tokens must be a positive int or None, got 0"):
        PrefillLimits(chunk_tokens=0)
    with pytest.raises(ValueError, match=r"bad arguments .*'sarathi'.*step_tokens must be"):
        policies.schedlab_config("sarathi", {"token_budget": -1})


# ---- cached-prefix length: SGLang's longest prefix match ----

SHARED = [7 + j % 400 for j in range(64)]  # 4 blocks of 16 tokens


def lpm_scenario(model_dir, args=None):
    # p0 runs first with prompt SHARED and leaves its 4 blocks in the prefix cache. Then
    # a: unrelated 64 tokens (hit 0), b: SHARED[:32] + 32 others (hit 2 blocks = 32),
    # c: SHARED + 16 others (hit 4 blocks = 64; at most num_tokens - 1 = 79 may hit).
    sched = sched_for(model_dir, "lpm", args)
    run(sched, [make_request("p0", SHARED, 2, arrival_time=0.0)])
    other = [401 + j for j in range(64)]
    reqs = [make_request("a", other, 2, arrival_time=1.0),
            make_request("b", SHARED[:32] + other[:32][::-1], 2, arrival_time=2.0),
            make_request("c", SHARED + other[:16], 2, arrival_time=3.0)]
    return sched, reqs


def test_cached_prefix_len_of_waiting_requests(model_dir):
    sched, reqs = lpm_scenario(model_dir)
    assert {r.request_id: sched.schedlab_policy.cached_prefix_len(r) for r in reqs} == {"a": 0, "b": 32, "c": 64}


def test_lpm_admits_longest_cached_prefix_first(model_dir):
    sched, reqs = lpm_scenario(model_dir)
    assert run(sched, reqs).admitted == ["c", "b", "a"]


def test_lpm_falls_back_to_fcfs_on_a_long_queue(model_dir):
    # max_queue 2: with 3 waiting the order is FCFS (a); then 2 wait and LPM picks c before b.
    sched, reqs = lpm_scenario(model_dir, {"max_queue": 2})
    assert run(sched, reqs).admitted == ["a", "c", "b"]


# ---- simulator: scheduling cost ----

class Slow(SchedulingPolicy):
    """Test policy: spends at least 3 ms of this thread's CPU time in every schedule()."""

    def on_schedule(self, output):
        import time
        end = time.thread_time() + 3e-3
        for _ in range(10**9):
            if time.thread_time() >= end:
                break


def test_simulator_adds_measured_scheduling_cost_only_when_asked(model_dir):
    from simulator import LinearModel, simulate
    from workloads.trace import Request
    step_model = LinearModel(c0=1e-3, c1=0.0, c2=0.0, c3=0.0, num_gpu_blocks=64)
    trace = [Request("a", 0.0, 16, 4)]
    kw = dict(model_dir=model_dir, policy=f"{__name__}.Slow", step_model=step_model)
    off = simulate(trace, **kw).records[0]
    assert off.ttft_s == pytest.approx(1e-3) and off.itl_s == pytest.approx([1e-3] * 3)  # the step model alone
    on = simulate(trace, scheduling_cost=True, **kw).records[0]
    # every step now also waits for schedule() (>= 3 ms spent by the policy) and update_from_output()
    assert on.ttft_s >= 1e-3 + 3e-3 and all(itl >= 1e-3 + 3e-3 for itl in on.itl_s)


# ---- docs/writing-a-policy.md: the example policy and the test template run as written ----

def test_docs_example_policy_passes_the_docs_test_template(model_dir, monkeypatch):
    import re
    import sys
    import types
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-policy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    policy_src = next(b for b in blocks if b.startswith("# mypkg/slo.py"))
    template_src = next(b for b in blocks if b.startswith("# tests/test_slack_first.py"))
    pkg, mod = types.ModuleType("mypkg"), types.ModuleType("mypkg.slo")
    exec(compile(policy_src, "mypkg/slo.py", "exec"), mod.__dict__)
    pkg.slo = mod
    monkeypatch.setitem(sys.modules, "mypkg", pkg)
    monkeypatch.setitem(sys.modules, "mypkg.slo", mod)
    template: dict = {}
    exec(compile(template_src, "test_slack_first.py", "exec"), template)
    tests = [f for name, f in template.items() if name.startswith("test_")]
    assert len(tests) == 3
    for test in tests:
        test(model_dir)


class V1Style(SchedulingPolicy):
    """A v1 policy: bind() without super(), a static key."""

    def bind(self, scheduler):
        self.sched = scheduler

    def waiting_key(self, request):
        return -request.num_prompt_tokens


def test_v1_policy_still_works_and_gets_the_clock(model_dir):
    sched = sched_for(model_dir, f"{__name__}.V1Style")
    sched.clock = lambda: 7.0
    assert sched.schedlab_policy.waited(req(2)) == 5.0
    assert run(sched, [req(0, 10), req(1, 40)]).admitted == ["r1", "r0"]


class RekeyNoQueue(SchedulingPolicy):
    rekey_every = 2

    def make_queue(self):
        from vllm.v1.core.sched.request_queue import FCFSRequestQueue
        return FCFSRequestQueue()


def test_rekey_with_a_queue_that_cannot_rekey_fails_early(model_dir):
    with pytest.raises(ValueError, match=r"RekeyNoQueue.*rekey_every=2 needs waiting queues with a rekey\(\)"):
        sched_for(model_dir, f"{__name__}.RekeyNoQueue")


def test_keyed_queue_rekeys_a_subset_and_skips_stale_entries():
    from policies.queue import KeyedRequestQueue
    keys = {"r0": 5, "r1": 3, "r2": 4, "r3": 1}
    q = KeyedRequestQueue(lambda r: keys[r.request_id])
    reqs = {f"r{i}": req(i) for i in range(4)}
    for r in reqs.values():
        q.add_request(r)
    assert [r.request_id for r in q] == ["r3", "r1", "r2", "r0"]
    keys.update(r0=0, r2=9)          # both changed, only r0 is said to be stale
    q.rekey([reqs["r0"], req(7)])    # r7 is not in this queue: ignored
    assert [r.request_id for r in q] == ["r0", "r3", "r1", "r2"] and len(q) == 4
    q.remove_request(reqs["r3"])
    q.rekey()                        # all: r2's 9 is seen now
    assert [r.request_id for r in q] == ["r0", "r1", "r2"] and len(q) == 3
    assert [q.pop_request().request_id for _ in range(3)] == ["r0", "r1", "r2"] and not q
    with pytest.raises(IndexError):
        q.peek_request()


def test_fastserve_on_vllms_async_scheduler(model_dir):
    """GPU servers run vLLM's AsyncScheduler: the same victims, through the same hooks."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    sync = sched_for(model_dir, "fastserve", FASTSERVE_ARGS, max_num_seqs=2, num_blocks=64)
    sync.vllm_config.scheduler_config.async_scheduling = True
    sched = policies.scheduler_class()(vllm_config=sync.vllm_config, kv_cache_config=sync.kv_cache_config,
                                       structured_output_manager=sync.structured_output_manager, block_size=16)
    assert isinstance(sched, AsyncScheduler)
    r0, r1 = req(0, 16, 40), req(1, 16, 40)
    sched.add_request(r0)
    sched.add_request(r1)
    for _ in range(5):
        step(sched)
    sched.add_request(req(2, 16, 40))
    trace = run(sched)
    assert trace.preempted[:2] == ["r1", "r0"] and trace.admitted_per_step[0] == ["r2"]
    assert sorted(trace.finished) == ["r0", "r1", "r2"]
    assert r0.num_preemptions == r1.num_preemptions == 1


def test_fastserve_displaces_for_kv_blocks_too(model_dir):
    # 11 usable blocks of 16 tokens, 4 slots. r0, r1 (64-token prompts) hold 5 blocks each from
    # step 2 on (65-80 tokens), 1 block is free. After 5 steps (level 1) r2 arrives: level 0, a free
    # slot but 3 blocks needed (40 tokens) -> displace r1 (most demoted, later arrival), which frees
    # its 5 blocks: 6 >= 3, r2 fits and is admitted in the same step.
    sched = sched_for(model_dir, "fastserve", FASTSERVE_ARGS, max_num_seqs=4, num_blocks=12)
    sched.add_request(req(0, 64, 40))
    sched.add_request(req(1, 64, 40))
    trace = SchedulerEvents()
    for _ in range(5):
        step(sched, trace)
    assert sched.schedlab_policy.free_kv_blocks() == 1
    r2 = req(2, 40, 4)
    sched.add_request(r2)
    assert sched.schedlab_policy.kv_blocks_needed(r2) == 3
    assert sched.schedlab_policy.kv_blocks_freed_by(sched.requests["r1"]) == 5
    step(sched, trace)
    assert trace.preempted == ["r1"] and trace.admitted_per_step[5] == ["r2"]
    trace2 = run(sched)
    assert sorted(trace2.finished) == ["r0", "r1", "r2"]
