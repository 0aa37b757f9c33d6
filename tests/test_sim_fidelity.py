"""Sim vs the real CPU ``vllm serve`` (tiny model): fidelity after calibration, and policy effects.

Two server starts in all (run under ``flock /tmp/schedlab-vllm.lock``): one timed fcfs server that
is calibrated and replays the held-out and policy workloads between the sweep's phases, one sjf
server for the policy workload.

Tolerances: measured with step noise and load-phase latencies (7 runs on the 2-core dev machine)
the sim was within 1.4% in throughput, 1-13% in TTFT p50, 7-25% in TTFT p90 (sim low) and 6% in
TPOT p50, while one real replay differed from the pool of five by up to 2%, 27%, 49% (872% with
one 212-ms machine stall) and 53% — the machine's speed drifts by ±20% over seconds and its
processes stall for 30-250 ms at random.
The sim must be within a base tolerance (10% throughput, 20% TTFT p50 and TPOT p50, 35% TTFT
p90), or within twice this run's replay spread if the machine is noisier, capped so that a step
model 2× off always fails (checked below on the same data). docs/simulator.md has the numbers.
"""

from __future__ import annotations

import dataclasses

import pytest

from serving.models import write_model_dir
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
    from serving.server import VLLMServer
    from simulator.calibrate import calibrate, replay_with_clock
    from simulator.fidelity import heldout_replays, SERVER_ARGS
    from workloads.prompts import materialize

    model_dir = write_model_dir("tiny", tmp_path_factory.mktemp("models"))
    # The held-out workload 1 + 5 times (fresh prompts each: no prefix-cache hits across them),
    # interleaved with the sweep: the first warms the server up (the CPU backend builds kernels
    # for new batch shapes: TTFT p50 680 ms in a cold replay vs 14 ms warm); the other five are
    # pooled, and how far one of them is from the pool is the real server's own spread.
    replays, pol = heldout_replays(), policy_workload()
    cal = calibrate(model_dir, name="test", server_args=SERVER_ARGS, extra_workloads=[*replays, pol])
    materialize(pol, model_dir)
    with VLLMServer(model_dir, extra_args=[*policies.vllm_args("sjf"), *SERVER_ARGS]) as server:
        sjf_run = replay_with_clock(server.url, server.model_name, pol)
    return dict(model_dir=model_dir, cal=cal, replays=replays, measured=cal.runs[1:len(replays)], pol=pol,
                fcfs_run=cal.runs[-1], sjf_run=sjf_run)


# metric -> (base tolerance, cap on the noise-widened tolerance)
TOLERANCES = {
    "output_token_throughput": (0.10, 0.3),
    "tpot_ms_p50": (0.20, 0.6),
    "ttft_ms_p50": (0.20, 0.6),
    "ttft_ms_p90": (0.35, 0.8),
}


def _tolerance(metric: str, self_err: float) -> float:
    base, cap = TOLERANCES[metric]
    return max(base, min(cap, 2 * self_err))


def _scaled(profile, factor: float):
    """The step model with every step-time term times ``factor`` (front-end latencies unchanged)."""
    return dataclasses.replace(profile, **{f"c{k}": factor * getattr(profile, f"c{k}") for k in range(7)})


def test_calibrated_sim_matches_real_server_on_heldout_workload(real):
    """Two questions, asked apart. (1) Does the calibrated step model predict the held-out replays'
    own engine steps? Within 20% on average (measured: 0.94-1.16). (2) Does the simulated Scheduler,
    at the speed the machine ran during those replays, give the server's latencies? The machine's
    speed drifts by +-20% over seconds, and this workload runs near saturation: a step model 10%
    slow put the sim's TTFT p90 117% high in one CI run (spread of one replay vs the pool: 11%).
    So (2) rescales the step model by the replays' measured/predicted step time before comparing."""
    from simulator.fidelity import (SIM_RUNS, Comparison, real_pooled, real_pooled_unstalled, self_spread, sim_kwargs,
                                    sim_pooled, step_model_ratio)  # fmt: skip

    cal, measured = real["cal"], real["measured"]
    p = cal.profile
    assert p.meta["num_steps"] > 100 and p.c0 > 0
    ratios = [step_model_ratio(p, run, cal.step_log) for run in measured]
    print("\nstep model on each replay's own steps, predicted/measured: " + " ".join(f"{r:.3f}" for r in ratios))
    speed = sum(ratios) / len(ratios)
    assert 1 / 1.2 < speed < 1.2, f"step model off the held-out steps by {speed:.2f}x"
    real_m, each = real_pooled(measured, cal.step_log)
    kw = sim_kwargs(p, measured[0], cal.step_log)
    at_speed = _scaled(p, 1 / speed)
    sim, _ = sim_pooled(real["replays"][0], real["model_dir"], at_speed, **kw)
    as_calibrated = Comparison(real_m, sim_pooled(real["replays"][0], real["model_dir"], p, **kw)[0])
    cmp, spread = Comparison(real_m, sim), self_spread(real_m, each)
    print(f"sim (step model x {1 / speed:.3f}) vs real (pooled replays)\n" + cmp.table())
    print("as calibrated (unscaled): " + ", ".join(f"{m} {as_calibrated.rel_err(m):.1%}" for m in TOLERANCES))
    print("one real replay vs the pool: " + ", ".join(f"{m} {v:.1%}" for m, v in spread.items()))
    unstalled, left_out = real_pooled_unstalled(measured)
    print(f"without the {left_out} real requests a client stall hit: "
          + ", ".join(f"{m} {Comparison(unstalled, sim).rel_err(m):.1%}" for m in ("ttft_ms_p50", "ttft_ms_p90")))  # fmt: skip
    n = len(real["replays"][0])
    assert real_m["num_completed"] == len(measured) * n and sim["num_completed"] == SIM_RUNS * n
    assert real_m["tpot_ms_p50"] > 0.5  # tokens streamed one by one, not in a burst
    tols = {m: _tolerance(m, spread[m]) for m in TOLERANCES}
    bad = {m: f"{cmp.rel_err(m):.1%} > {tol:.0%}" for m, tol in tols.items() if cmp.rel_err(m) > tol}
    assert not bad, bad
    # Preemptions are a handful on this workload: within 3 a replay.
    pre = "server_num_preemptions"
    assert abs(sim[pre] - real_m[pre]) <= 3

    # The check can fail: the same sim with every step twice as long is out of tolerance.
    slow = _scaled(at_speed, 2.0)
    slow_err = Comparison(real_m, sim_pooled(real["replays"][0], real["model_dir"], slow, **kw)[0]).rel_err("tpot_ms_p50")
    print(f"step model 2x slower: tpot_ms_p50 error {slow_err:.1%}")
    assert slow_err > tols["tpot_ms_p50"]


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
