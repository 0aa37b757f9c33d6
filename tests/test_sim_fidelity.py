"""Sim vs the real CPU ``vllm serve`` (tiny model): fidelity after calibration, and policy effects.

Two server starts in all (run under ``flock /tmp/schedlab-vllm.lock``): one timed fcfs server that
is calibrated and then replays the held-out and policy workloads, one sjf server for the policy
workload.

Tolerances: on a 2-core machine the load generator, the API server and the engine core share the
cores, so client-side latencies of the *real* server vary run to run (measured: TTFT p50 of the
same workload 11 ms to 136 ms across sessions, with other jobs running). Throughput and TPOT p50
are asserted within 25%, TTFT p50 within 50% — or within twice the real server's own run-to-run
difference on the same workload (measured in the test), whichever is larger. TTFT p90 and
preemptions are printed; ``benchmarks/sim_fidelity.py`` prints the actual errors.
"""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.models import write_model_dir
from workloads.trace import Request

pytestmark = pytest.mark.server


def policy_workload() -> list[Request]:
    """8 long requests fill the 40-block KV cache, then short and long prompts queue up behind
    them (FCFS: shorts wait behind a long head-of-line request; SJF: shorts go first)."""
    first = [Request(f"pol-fill-{i}", 0.005 * i, 700, 150) for i in range(8)]
    rest = [Request(f"pol-{i}", 0.05 + 0.01 * i, 32 if i % 2 else 700, 32) for i in range(32)]
    return first + rest


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    import policies
    from orchestrator.server import VLLMServer
    from simulator.calibrate import calibrate, replay
    from simulator.fidelity import SERVER_ARGS, heldout_workload
    from workloads.prompts import materialize

    model_dir = write_model_dir("tiny", tmp_path_factory.mktemp("models"))
    heldout, pol = heldout_workload(), policy_workload()
    # The held-out workload twice (fresh prompts: no prefix-cache hits across the two): the first
    # replay warms the server up (the CPU backend compiles kernels for new batch shapes: TTFT p50
    # 680 ms in a cold replay vs 14 ms warm) and measures how far the real server is from itself;
    # the sim is held to that, or 25%, whichever is larger.
    again = [dataclasses.replace(r, request_id="again-" + r.request_id) for r in heldout]
    cal = calibrate(model_dir, name="test", server_args=SERVER_ARGS, extra_workloads=[again, heldout, pol])
    materialize(pol, model_dir)
    with VLLMServer(model_dir, extra_args=[*policies.vllm_args("sjf"), *SERVER_ARGS]) as server:
        sjf_run = replay(server.url, server.model_name, pol)
    return dict(model_dir=model_dir, cal=cal, heldout=heldout, pol=pol, fcfs_run=cal.runs[2], sjf_run=sjf_run,
                again_run=cal.runs[0])


def test_calibrated_sim_matches_real_server_on_heldout_workload(real):
    from simulator import simulate
    from simulator.fidelity import Comparison, real_summary, sim_kwargs

    cal = real["cal"]
    assert cal.profile.meta["num_steps"] > 100 and cal.profile.c0 > 0
    real_m = real_summary(cal.runs[1], cal.step_log)
    real_again = real_summary(real["again_run"], cal.step_log)
    sim = simulate(real["heldout"], model_dir=real["model_dir"], step_model=cal.profile, **sim_kwargs(cal.profile))
    cmp, self_cmp = Comparison(real_m, sim.summary), Comparison(real_m, real_again)
    print("\nsim vs real\n" + cmp.table() + "\nreal vs real (same workload, fresh prompts)\n" + self_cmp.table())
    assert real_m["num_completed"] == sim.summary["num_completed"] == len(real["heldout"])
    for m, tol in (("output_token_throughput", 0.25), ("tpot_ms_p50", 0.25), ("ttft_ms_p50", 0.5)):
        assert cmp.rel_err(m) <= max(tol, 2 * self_cmp.rel_err(m)), m
    # TTFT p90 is printed, not asserted: its tail is other processes' CPU contention on this
    # machine (real p90 of this workload: 29 ms in one session, 590 ms in another).


def _short_ttft(records, short: set[str]) -> float:
    xs = [r.ttft_s for r in records if r.request_id in short and r.ok]
    assert len(xs) == len(short)
    return sum(xs) / len(xs)


def test_sjf_vs_fcfs_effect_is_the_same_in_sim_and_real(real):
    from simulator import simulate
    from simulator.fidelity import sim_kwargs

    short = {r.request_id for r in real["pol"] if r.prompt_len < 100}
    profile = real["cal"].profile
    real_ratio = _short_ttft(real["sjf_run"].records, short) / _short_ttft(real["fcfs_run"].records, short)
    sim_ttft = {
        p: _short_ttft(simulate(real["pol"], model_dir=real["model_dir"], policy=p, step_model=profile,
                                **sim_kwargs(profile)).records, short)  # fmt: skip
        for p in ("fcfs", "sjf")
    }
    sim_ratio = sim_ttft["sjf"] / sim_ttft["fcfs"]
    print(f"\nshort-request mean TTFT sjf/fcfs: real {real_ratio:.2f}, sim {sim_ratio:.2f}")
    assert real_ratio < 0.8 and sim_ratio < 0.8  # SJF helps short requests in both
