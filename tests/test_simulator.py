"""The simulator on vLLM's real Scheduler (no server): loop semantics, step models, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from serving.models import write_model_dir
from simulator import EngineLimits, LinearModel, RooflineModel, load_step_model, simulate
from simulator.step_model import BatchShape
from workloads.synthetic import synthetic
from workloads.trace import Request


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return write_model_dir("llama3_8b", tmp_path_factory.mktemp("models8b"))


LINEAR = LinearModel(c0=2e-3, c1=20e-6, c2=100e-6, c3=0.0, num_gpu_blocks=256)


def test_every_request_gets_its_output_tokens_and_times_add_up(tiny):
    trace = list(synthetic(40, 50.0, prompt_len="uniform:20:300", output_len="uniform:1:40", seed=3))
    res = simulate(trace, model_dir=tiny, step_model=LINEAR, engine=EngineLimits(max_num_seqs=8))
    assert [r.request_id for r in res.records] == [r.request_id for r in trace]
    for rec, tr in zip(res.records, trace):
        assert rec.ok and rec.output_tokens == tr.output_len == rec.requested_output_tokens
        assert len(rec.itl_s) == tr.output_len - 1
        assert rec.e2e_s == pytest.approx(rec.ttft_s + sum(rec.itl_s))
        assert rec.ttft_s >= LINEAR.c0  # at least one step
    assert res.summary["num_completed"] == 40
    assert set(res.timeseries.columns) == {"t_s", "num_running", "num_waiting", "kv_cache_usage"}
    assert res.timeseries["num_running"].max() <= 8
    assert res.timeseries["t_s"].is_monotonic_increasing


def test_decode_steps_follow_the_step_model(tiny):
    # One request alone: TTFT = one prefill step, every ITL = one decode step (context-free model).
    res = simulate([Request("a", 0.0, 100, 5)], model_dir=tiny, step_model=LINEAR)
    rec = res.records[0]
    assert rec.ttft_s == pytest.approx(2e-3 + 100 * 20e-6)
    assert rec.itl_s == pytest.approx([2e-3 + 100e-6] * 4)


def test_kv_pressure_causes_real_preemptions(tiny):
    trace = [Request(f"r{i}", 0.0, 200, 200) for i in range(12)]
    res = simulate(trace, model_dir=tiny, step_model=LINEAR, engine=EngineLimits(max_num_seqs=16, num_gpu_blocks=64))
    assert res.num_preemptions > 0
    assert res.summary["server_num_preemptions"] == res.num_preemptions
    assert all(r.ok and r.output_tokens == 200 for r in res.records)
    assert res.timeseries["kv_cache_usage"].max() > 0.9


def test_prefix_caching_uses_real_block_hashes(tiny):
    shared = list(synthetic(30, 5.0, prompt_len=600, output_len=4, prefix_groups=1, prefix_blocks=1, seed=0))
    unique = list(synthetic(30, 5.0, prompt_len=600, output_len=4, seed=0))
    hit = simulate(shared, model_dir=tiny, step_model=LINEAR).summary["server_prefix_cache_hit_rate"]
    miss = simulate(unique, model_dir=tiny, step_model=LINEAR).summary["server_prefix_cache_hit_rate"]
    assert miss == 0.0 and hit > 0.7  # 29 of 30 requests reuse 512 of 600 tokens (block-aligned)


def test_same_seed_same_metrics(tiny):
    trace = list(synthetic(60, 40.0, prompt_len="uniform:16:400", output_len="uniform:4:64", seed=7))
    runs = [simulate(trace, model_dir=tiny, step_model="linear:cpu_tiny", engine=EngineLimits(num_gpu_blocks=48), policy="sjf", seed=5)
            for _ in range(2)]  # fmt: skip
    a, b = (r.summary for r in runs)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)  # NaN == NaN here
    assert [dataclasses.asdict(r) for r in runs[0].records] == [dataclasses.asdict(r) for r in runs[1].records]
    assert runs[0].timeseries.equals(runs[1].timeseries)


def test_sjf_lowers_short_request_ttft_under_load(tiny):
    trace = list(synthetic(60, 200.0, prompt_len="uniform:16:900", output_len=32, seed=2))
    short = {r.request_id for r in trace if r.prompt_len < 200}
    ttft = {}
    for policy in ("fcfs", "sjf"):
        res = simulate(trace, model_dir=tiny, policy=policy, step_model=LINEAR, engine=EngineLimits(max_num_seqs=8, num_gpu_blocks=128))
        ttft[policy] = sum(r.ttft_s for r in res.records if r.request_id in short) / len(short)
    assert ttft["sjf"] < 0.7 * ttft["fcfs"]


def test_roofline_shapes_and_kv_blocks(llama8b):
    h100 = load_step_model("roofline:h100").bind_model(__import__("json").load(open(llama8b / "config.json")))
    one, many = h100.step_time(0, 1, 1, 1000, 0), h100.step_time(0, 128, 128, 128_000, 0)
    assert 4e-3 < one < 12e-3  # 16 GB of weights at ~2.7 TB/s + overhead
    assert one < many  # KV reads grow with batch
    prefill = h100.step_time(8192, 0, 1, 8192, 8192 * 4096)
    assert prefill > 0.05  # compute bound: 2 * 8e9 * 8192 FLOPs
    blocks = h100.num_gpu_blocks(16)
    assert 20_000 < blocks < 30_000  # (72 GB - 16 GB - 2 GiB) / 2 MiB per block
    h200 = load_step_model("roofline:h200").bind_model(__import__("json").load(open(llama8b / "config.json")))
    assert h200.num_gpu_blocks(16) > blocks and h200.step_time(0, 1, 1, 1000, 0) < one


def test_8b_on_h100_runs_with_derived_kv_cache(llama8b):
    trace = list(synthetic(200, 20.0, prompt_len="lognormal:500:0.5", output_len="lognormal:100:0.5", seed=1))
    res = simulate(trace, model_dir=llama8b, step_model="roofline:h100")
    assert res.summary["num_completed"] == 200
    assert 5 < res.summary["tpot_ms_p50"] < 40
    assert res.num_preemptions == 0 and res.summary["server_kv_cache_usage_max"] < 0.5


def test_linear_fit_recovers_coefficients():
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = [BatchShape(int(p) * (i % 2), int(d), int(d) + 1, int(c))  # half the steps decode-only
              for i, (p, d, c) in enumerate(rng.integers(0, 2000, (200, 3)))]  # fmt: skip
    true = LinearModel(1e-3, 2e-5, 3e-5, 4e-8, 5e-3)
    times = [true.step_time(s.prefill_tokens, s.decode_tokens, s.num_reqs, s.sum_context, 0) for s in shapes]
    fit = LinearModel.fit(shapes, times)
    assert [fit.c0, fit.c1, fit.c2, fit.c3, fit.c4] == pytest.approx([1e-3, 2e-5, 3e-5, 4e-8, 5e-3], rel=1e-6)
    assert fit.meta["r2"] == pytest.approx(1.0)


def test_linear_fit_recovers_engine_state_terms():
    import numpy as np

    from simulator.step_model import cycle_time

    rng = np.random.default_rng(1)
    shapes = [BatchShape(int(p) * (i % 2), int(d), int(d) + 1, int(c)) for i, (p, d, c) in enumerate(rng.integers(0, 900, (300, 3)))]
    arrivals, new = rng.integers(0, 3, 300).tolist(), (rng.random(300) < 0.3).tolist()
    true = LinearModel(1e-3, 2e-5, 3e-5, 4e-8, 5e-3, c5=4e-4, c6=1e-5)
    times = [cycle_time(true, s, arrivals=a, new_shape=f) for s, a, f in zip(shapes, arrivals, new)]
    fit = LinearModel.fit(shapes, times, arrivals=arrivals, new_shape=new)
    assert [fit.c5, fit.c6] == pytest.approx([4e-4, 1e-5], rel=1e-6)
    assert LinearModel.fit(shapes, times).c5 == 0.0  # terms only fitted when their data is given


def test_first_run_of_a_token_count_costs_once_and_warm_counts_do_not(tiny):
    # One request at a time, the same prompt length: every prefill step has the same token count.
    trace = [Request(f"r{i}", 0.5 * i, 100, 4) for i in range(4)]
    base = LinearModel(c0=1e-3, c1=1e-5, c2=1e-4, c3=0.0, num_gpu_blocks=256)
    slow_first = dataclasses.replace(base, c6=1e-4)  # +10 ms for a never-run 100-token step
    ttft = lambda m, **kw: [r.ttft_s for r in simulate(trace, model_dir=tiny, step_model=m, **kw).records]  # noqa: E731
    plain, cold, warm = ttft(base), ttft(slow_first), ttft(slow_first, warm_num_tokens={1, 100})
    assert cold[0] == pytest.approx(plain[0] + 0.01) and cold[1:] == pytest.approx(plain[1:])
    assert warm == pytest.approx(plain)
    # A warm-up replay of the same workload runs the 100-token prefill and the 1-token decodes first.
    assert ttft(slow_first, warmup_replay=True) == pytest.approx(plain)
    assert ttft(base, warmup_replay=True) == pytest.approx(plain)  # no first-run cost: nothing to warm


def test_requests_arriving_during_a_step_slow_it(tiny):
    # Request b arrives while a's prefill runs: with c5 that step (a's first token) takes longer.
    trace = [Request("a", 0.0, 200, 3), Request("b", 0.001, 20, 3), Request("c", 1.0, 200, 3)]
    base = LinearModel(c0=1e-3, c1=1e-5, c2=1e-4, c3=0.0, num_gpu_blocks=256)
    busy = dataclasses.replace(base, c5=5e-3)
    plain, slowed = (simulate(trace, model_dir=tiny, step_model=m).records for m in (base, busy))
    assert slowed[0].ttft_s == pytest.approx(plain[0].ttft_s + 5e-3)
    assert slowed[2].ttft_s == pytest.approx(plain[2].ttft_s)  # nobody arrived during c's steps


def _normal_scores(x):
    import numpy as np
    from statistics import NormalDist

    inv = NormalDist().inv_cdf
    return np.array([inv((k + 0.5) / len(x)) for k in np.argsort(np.argsort(x))])


def test_step_noise_keeps_the_mean_and_the_measured_spread_and_correlation():
    import numpy as np

    from simulator.fit import fit_step_noise
    from simulator.noise import NOISE_PROBS, StepNoise

    rng = np.random.default_rng(0)
    measured = rng.lognormal(-0.1, 0.35, 20_000)  # a right-skewed ratio, median below its mean
    fit = fit_step_noise([measured[:10_000], measured[10_000:]])
    assert fit["noise_drift_sd"] < 0.05  # independent steps: no drift
    draw = StepNoise(fit["noise_quantiles"], NOISE_PROBS, fit["noise_phi"], fit["noise_drift_sd"], seed=1)
    x = np.array([draw() for _ in range(40_000)])
    assert x.mean() == pytest.approx(1.0, abs=0.02)
    assert np.median(x) == pytest.approx(np.median(measured) / measured.mean(), rel=0.05)
    assert np.percentile(x, 99) == pytest.approx(np.percentile(measured, 99) / measured.mean(), rel=0.1)

    # A drifting machine: the fit gets the drift back, and the draws keep mean 1 and correlate.
    q = [v / np.exp(0.3**2 / 2) for v in fit["noise_quantiles"]]  # E[exp(drift)] = exp(sd²/2)
    drifting = StepNoise(q, NOISE_PROBS, phi=0.95, drift_sd=0.3, seed=2)
    y = np.array([drifting() for _ in range(40_000)])
    assert y.mean() == pytest.approx(1.0, abs=0.03)
    ly = np.log(y)
    assert np.corrcoef(ly[:-20], ly[20:])[0, 1] > 0.15  # still correlated 20 steps apart
    refit = fit_step_noise([y[:20_000], y[20_000:]])
    assert refit["noise_phi"] == pytest.approx(0.95, abs=0.03)
    assert refit["noise_drift_sd"] == pytest.approx(0.3, rel=0.3)
    same = StepNoise(q, NOISE_PROBS, phi=0.95, drift_sd=0.3, seed=2)
    assert [same() for _ in range(100)] == y[:100].tolist()


def test_rare_stalls_stay_rare_and_isolated():
    import numpy as np

    from simulator.fit import fit_step_noise
    from simulator.noise import NOISE_PROBS, StepNoise

    # One step in 5000 measured 30x slower: the sim must not make it a percent of all steps.
    r = np.random.default_rng(1).lognormal(0, 0.2, 10_000)
    r[[2_000, 7_000]] = 30.0
    fit = fit_step_noise([r])
    draw = StepNoise(fit["noise_quantiles"], NOISE_PROBS, fit["noise_phi"], fit["noise_drift_sd"], seed=0)
    x = np.array([draw() for _ in range(100_000)])
    big = np.flatnonzero(x > 5)
    assert len(big) < 100  # < 0.1% of steps
    assert x.mean() == pytest.approx(1.0, abs=0.03)


def test_step_noise_widens_the_ttft_tail_under_load(tiny):
    import numpy as np

    from simulator.noise import NOISE_PROBS

    # ~60% busy: queues form now and then, and slower-than-mean steps lengthen them more than
    # faster ones shorten them.
    trace = list(synthetic(300, 30.0, prompt_len="uniform:16:400", output_len="uniform:4:64", seed=2))
    base = LinearModel(c0=2e-3, c1=20e-6, c2=100e-6, c3=0.0, num_gpu_blocks=256)
    q = np.quantile(np.random.default_rng(0).lognormal(0, 0.5, 5000), NOISE_PROBS)
    q /= (np.diff(NOISE_PROBS) * (q[:-1] + q[1:]) / 2).sum() * np.exp(0.2**2 / 2)  # mean 1 with the drift
    noisy = dataclasses.replace(base, noise_quantiles=list(q), noise_phi=0.95, noise_drift_sd=0.2)
    plain = simulate(trace, model_dir=tiny, step_model=base, engine=EngineLimits(max_num_seqs=16))
    runs = [simulate(trace, model_dir=tiny, step_model=noisy, engine=EngineLimits(max_num_seqs=16), seed=s) for s in range(3)]
    assert all(r.summary["ttft_ms_p90"] > 1.2 * plain.summary["ttft_ms_p90"] for r in runs)
    # Same work at about the same mean speed: the runs take about as long.
    assert all(r.sim_duration_s == pytest.approx(plain.sim_duration_s, rel=0.1) for r in runs)
    assert len({r.summary["ttft_ms_p90"] for r in runs}) == 3  # the seed draws the noise


def test_profile_round_trip(tmp_path):
    path = LINEAR.save(tmp_path / "p.yaml")
    loaded = load_step_model(f"linear:{path}")
    assert isinstance(loaded, LinearModel) and loaded.c2 == LINEAR.c2 and loaded.num_gpu_blocks == 256
    assert isinstance(load_step_model("linear:cpu_tiny"), LinearModel)  # the committed profile
    assert isinstance(load_step_model({"kind": "roofline", "hardware": "a100", "step_overhead_s": 0.01}), RooflineModel)


@pytest.mark.parametrize(
    "spec, match",
    [("roofline:tpu9", "tpu9"), ("linear:nope", "nope"), ("magic", "magic"), ({"kind": "linear", "c0": 1}, "c1")],
)
def test_bad_step_model_names_the_value(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_step_model(spec)


def test_bad_policy_fails_early(tiny):
    with pytest.raises(ValueError, match="nosuchpolicy"):
        simulate([Request("a", 0.0, 10, 2)], model_dir=tiny, policy="nosuchpolicy", step_model=LINEAR)


def test_request_longer_than_model_is_a_400_record(tiny):
    res = simulate([Request("big", 0.0, 5000, 10), Request("ok", 0.0, 10, 2)], model_dir=tiny, step_model=LINEAR)
    big = next(r for r in res.records if r.request_id == "big")
    assert big.status == 400 and "max_model_len" in big.error and not big.ok
    assert res.summary["num_completed"] == 1


