"""Scheduling policies on vLLM 0.32's real v1 Scheduler (in-process, as vLLM's tests/v1/core)."""

from __future__ import annotations

import random

import pytest

import policies
from serving.models import write_model_dir
from policies.driver import run, step
from policies.inprocess import make_request, make_scheduler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def sched_for(model_dir, policy="fcfs", policy_args=None, **kw):
    kw.setdefault("max_num_seqs", 1)
    return make_scheduler(
        model_dir, scheduler_cls=policies.scheduler_class(),
        additional_config=policies.schedlab_config(policy, policy_args, check_invariants=True), **kw,
    )


def req(i, prompt_len=16, max_tokens=2, **kw):
    return make_request(f"r{i}", [3 + (i * 7 + j) % 500 for j in range(prompt_len)], max_tokens, arrival_time=float(i), **kw)


def order(model_dir, policy, reqs, policy_args=None, **kw):
    return run(sched_for(model_dir, policy, policy_args, **kw), reqs).admitted


# ---- waiting order: one request at a time (max_num_seqs=1), all waiting from the start ----

def test_fcfs_is_arrival_order(model_dir):
    assert order(model_dir, "fcfs", [req(0, 40), req(1, 10), req(2, 25)]) == ["r0", "r1", "r2"]


def test_sjf_admits_shortest_prompt_first(model_dir):
    assert order(model_dir, "sjf", [req(0, 40), req(1, 10), req(2, 25)]) == ["r1", "r2", "r0"]


def test_sjf_with_hint_admits_shortest_predicted_output_first(model_dir):
    reqs = [req(i, 16, extra_args={"output_len_hint": h}) for i, h in enumerate([300, 5, 40])]
    assert order(model_dir, "sjf", reqs, {"use_hint": True}) == ["r1", "r2", "r0"]
    reqs = [req(i, 16, extra_args={"output_len_hint": h}) for i, h in enumerate([300, 5, 40])]
    assert order(model_dir, "sjf", reqs) == ["r0", "r1", "r2"]  # equal prompts: arrival order


def test_ljf_admits_longest_prompt_first(model_dir):
    assert order(model_dir, "ljf", [req(0, 10), req(1, 40), req(2, 25)]) == ["r1", "r2", "r0"]


def test_priority_lower_value_first_then_arrival(model_dir):
    reqs = [req(0, priority=2), req(1, priority=0), req(2, priority=1), req(3, priority=0)]
    assert order(model_dir, "priority", reqs) == ["r1", "r3", "r2", "r0"]


def test_edf_earliest_absolute_deadline_first(model_dir):
    # absolute deadlines: r0 0+9=9, r1 1+1=2, r2 2+3=5, r3 none (last)
    reqs = [req(0, extra_args={"deadline_s": 9}), req(1, extra_args={"deadline_s": 1}),
            req(2, extra_args={"deadline_s": 3}), req(3)]
    assert order(model_dir, "edf", reqs) == ["r1", "r2", "r0", "r3"]


def test_vtc_alternates_tenants(model_dir):
    reqs = [req(i, 16, 4, extra_args={"tenant": "A"}) for i in range(4)]
    reqs += [req(i, 16, 4, extra_args={"tenant": "B"}) for i in range(4, 6)]
    assert order(model_dir, "fcfs", reqs) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    reqs = [req(i, 16, 4, extra_args={"tenant": "A"}) for i in range(4)]
    reqs += [req(i, 16, 4, extra_args={"tenant": "B"}) for i in range(4, 6)]
    assert order(model_dir, "vtc", reqs) == ["r0", "r4", "r1", "r5", "r2", "r3"]


def test_vtc_alternates_within_one_step(model_dir):
    reqs = [req(i, 16, 2, extra_args={"tenant": "A"}) for i in range(3)]
    reqs += [req(i, 16, 2, extra_args={"tenant": "B"}) for i in range(3, 5)]
    trace = run(sched_for(model_dir, "vtc", max_num_seqs=4), reqs)
    assert trace.admitted_per_step[0] == ["r0", "r3", "r1", "r4"]


def test_vtc_charges_the_heavy_tenant(model_dir):
    # A sends 64-token prompts, B 16-token ones (+1 decode token at weight 2 each): after A's first
    # request (A=66) B is served until it passes A (18, 36, 54, 72), then A again.
    reqs = [req(i, 64, 2, extra_args={"tenant": "A"}) for i in range(3)]
    reqs += [req(i, 16, 2, extra_args={"tenant": "B"}) for i in range(3, 7)]
    assert order(model_dir, "vtc", reqs) == ["r0", "r3", "r4", "r5", "r6", "r1", "r2"]


def test_mlfq_skip_join_puts_long_prompts_lower(model_dir):
    reqs = [req(0, 300), req(1, 20), req(2, 600), req(3, 30)]
    assert order(model_dir, "mlfq", reqs, {"prompt_quantum": 256}) == ["r1", "r3", "r0", "r2"]
    reqs = [req(0, 300), req(1, 20), req(2, 600), req(3, 30)]
    assert order(model_dir, "mlfq", reqs, {"skip_join": False}) == ["r0", "r1", "r2", "r3"]


def test_mlfq_level_drops_with_tokens_served(model_dir):
    mlfq = policies.load_policy("mlfq", {"num_levels": 3, "base_quantum": 4, "skip_join": False})
    r = req(0, 16, 100)
    levels = []
    for _ in range(14):
        levels.append(mlfq.level(r))
        r.append_output_token_ids(5)
    assert levels == [0] * 4 + [1] * 8 + [2] * 2


# ---- admission veto ----

class EvenOnly(policies.SchedulingPolicy):
    """Test policy: admits only even-numbered requests while any odd one is older."""

    def admit(self, request):
        return int(request.request_id[1:]) % 2 == 0 or not any(
            int(r.request_id[1:]) % 2 == 0 for r in self.scheduler.waiting)


def test_admission_veto_lets_later_requests_pass(model_dir):
    trace = run(sched_for(model_dir, f"{__name__}.EvenOnly"), [req(i) for i in range(4)])
    assert trace.admitted == ["r0", "r2", "r1", "r3"]


# ---- preemption victim ----

def preemption_scenario(model_dir, policy, reqs, policy_args=None):
    """7 usable blocks of 16 tokens; 3 requests of 32 prompt tokens grow until one must go."""
    sched = sched_for(model_dir, policy, policy_args, max_num_seqs=4, num_blocks=8)
    for r in reqs:
        sched.add_request(r)
    from policies.driver import SchedulerEvents
    trace = SchedulerEvents()
    preempt_within(sched, trace)
    return sched, trace


def preempt_within(sched, trace, max_steps=100):
    """Step until vLLM preempts a request. The scenarios here preempt within a few steps (three()'s
    requests, 2 full blocks each, all need a third at their first decode step with 1 left: step 2)."""
    for _ in range(max_steps):
        if trace.preempted:
            return
        step(sched, trace)
    pytest.fail(f"no preemption within {max_steps} steps (admitted {trace.admitted})")


def three(**per_req):
    return [req(i, 32, 60, **{k: v[i] for k, v in per_req.items()}) for i in range(3)]


@pytest.mark.parametrize("policy, kw, victim", [
    ("fcfs", {}, "r2"),                                                # vLLM: last admitted
    ("priority", {"priority": [1, 0, 0]}, "r0"),                     # largest priority value
    ("edf", {"extra_args": [{"deadline_s": 9}, {"deadline_s": 50}, {"deadline_s": 1}]}, "r1"),
    ("vtc", {"extra_args": [{"tenant": "A"}, {"tenant": "B"}, {"tenant": "A"}]}, "r2"),
])
def test_policy_victim_is_preempted(model_dir, policy, kw, victim):
    sched, trace = preemption_scenario(model_dir, policy, three(**kw))
    assert trace.preempted[0] == victim
    assert sched.requests[victim].num_preemptions == 1
    assert sum(r.num_preemptions for r in sched.requests.values()) == len(trace.preempted)


def test_sjf_hint_victim_has_most_work_left(model_dir):
    kw = {"extra_args": [{"output_len_hint": 200}, {"output_len_hint": 10}, {"output_len_hint": 50}]}
    sched, trace = preemption_scenario(model_dir, "sjf", three(**kw), {"use_hint": True})
    assert trace.admitted_per_step[0] == ["r1", "r2", "r0"]
    assert trace.preempted[0] == "r0"


def test_mlfq_victim_is_most_demoted(model_dir):
    # r0 starts alone and is demoted by the tokens it is served; then r1, r2 arrive.
    sched = sched_for(model_dir, "mlfq", {"base_quantum": 4, "skip_join": False}, max_num_seqs=4, num_blocks=8)
    sched.add_request(req(0, 32, 60))
    for _ in range(10):
        step(sched)
    for i in (1, 2):
        sched.add_request(req(i, 32, 60))
    from policies.driver import SchedulerEvents
    trace = SchedulerEvents()
    preempt_within(sched, trace)
    assert trace.preempted[0] == "r0"  # fcfs would preempt r2, the last admitted


@pytest.mark.parametrize("policy", sorted(policies.SCHEDULING_POLICIES))
def test_random_workload_victims_have_largest_key_and_all_finish(model_dir, policy):
    rng = random.Random(7)
    reqs = [req(i, rng.randint(4, 80), rng.randint(1, 60), priority=rng.randint(0, 3),
                extra_args={"tenant": rng.choice("ABC"), "deadline_s": rng.uniform(1, 50),
                            "output_len_hint": rng.randint(1, 60)}) for i in range(40)]
    sched = sched_for(model_dir, policy, max_num_seqs=8, num_blocks=24, max_num_batched_tokens=128)
    pol = sched.schedlab_policy
    checked = []
    if pol.orders_victims:
        preempt = sched._preempt_request

        def checking_preempt(request, *a, **kw):
            others = [pol.preemption_key(r) for r in sched.running]
            checked.append(all(pol.preemption_key(request) >= k for k in others))
            return preempt(request, *a, **kw)
        sched._preempt_request = checking_preempt
    trace = run(sched, reqs)
    assert sorted(trace.finished) == sorted(r.request_id for r in reqs)
    assert len(trace.preempted) > 0 and all(checked)
    assert sum(r.num_preemptions for r in reqs) == len(trace.preempted) == trace.preemption_events


# ---- registry and config ----

def test_unknown_policy_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'sjff'.*edf, fastserve, fcfs"):
        policies.schedlab_config("sjff")
    with pytest.raises(ValueError, match=r"unknown block allocator 'lowest'.*lowest_id"):
        policies.vllm_args(allocator="lowest")
    with pytest.raises(ValueError, match=r"cannot load scheduling policy 'nope.mod.P'"):
        policies.schedlab_config("nope.mod.P")
    with pytest.raises(ValueError, match=r"bad arguments .*'mlfq'.*bogus"):
        policies.schedlab_config("mlfq", {"bogus": 1})


def test_dotted_path_policy_is_loaded(model_dir):
    sched = sched_for(model_dir, f"{__name__}.EvenOnly")
    assert type(sched.schedlab_policy) is EvenOnly


def test_vllm_args_round_trip():
    import json
    args = policies.vllm_args("sjf", {"use_hint": True}, "lowest_id")
    assert args[:2] == ["--scheduler-cls", "policies.scheduler.PolicyScheduler"]
    assert json.loads(args[3]) == {"schedlab": {"policy": "sjf", "policy_args": {"use_hint": True},
                                                "allocator": "lowest_id", "allocator_args": {},
                                                "check_invariants": False}}


def test_async_scheduling_gets_async_scheduler(model_dir):
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    sched = sched_for(model_dir, "sjf")
    assert not isinstance(sched, AsyncScheduler)
    sched.vllm_config.scheduler_config.async_scheduling = True
    cls = policies.scheduler_class()
    async_sched = cls(vllm_config=sched.vllm_config, kv_cache_config=sched.kv_cache_config,
                      structured_output_manager=sched.structured_output_manager, block_size=16)
    assert isinstance(async_sched, AsyncScheduler) and isinstance(async_sched, cls)
    assert type(async_sched.waiting).__name__ == "KeyedRequestQueue"
