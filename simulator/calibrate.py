"""Calibrate the linear step-time model against a real vLLM server.

    flock /tmp/schedlab-vllm.lock python -m simulator.calibrate --model tiny --name cpu_tiny

starts ``vllm serve`` with ``simulator.step_timer.StepTimingScheduler``, replays a sweep of batch
shapes (bursts of 1..32 concurrent requests × short/long prompts, then a Poisson mix) with the
real load generator, fits ``t = c0 + c1·prefill + c2·decode + c3·Σcontext`` to the measured step
cycles, measures the fixed request latencies outside engine steps (client send → engine add,
engine step end → client sees the token), and saves the profile to ``simulator/profiles/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simulator.linear import LinearModel, _nonneg_lstsq
from simulator.load import PROFILE_DIR
from simulator.step_model import BatchShape, cycle_time
from simulator.step_timer import ENV_VAR, prompt_key
from workloads.records import RequestRecord
from workloads.trace import Request

STEP_TIMER_CLS = "simulator.step_timer.StepTimingScheduler"
# Engine limits used for calibration and the fidelity check (the sim must use the same ones).
DEFAULT_SERVER_ARGS = ("--max-num-seqs", "32", "--max-num-batched-tokens", "1024")


def sweep_workload(seed: int = 0, *, sustained: bool = True) -> list[list[Request]]:
    """Phases of the calibration sweep, each replayed after the previous one drained.

    Bursts of 1-32 simultaneous requests × short/long prompts cover the batch sizes; a 40 req/s
    Poisson mix batches prefill chunks with decodes of varied context; four sustained phases
    (gamma arrivals, cv 1.5, alternately 10 and 30 req/s, lognormal lengths; ~3.5 s each)
    sample steps over seconds of steady serving: on a shared 2-core machine the same batch shape
    runs up to 2× slower in one 50-ms burst than in another, and only long phases average that."""
    import numpy as np

    from workloads.synthetic import synthetic

    rng = np.random.default_rng(seed)
    phases: list[list[Request]] = []
    for conc in (1, 4, 16, 32):
        for plen in (48, 400):
            phases.append([Request(f"cal-b{conc}-{plen}-{i}", 0.0, plen, 24) for i in range(conc)])
    # A Poisson mix: prefill chunks batched with decodes of varied context.
    t = np.cumsum(rng.exponential(1 / 40.0, 60))
    phases.append([
        Request(f"cal-mix-{i}", float(t[i]), int(rng.integers(16, 700)), int(rng.integers(4, 80)))
        for i in range(60)
    ])  # fmt: skip
    if sustained:
        for k, (n, rate) in enumerate(((35, 10.0), (100, 30.0), (35, 10.0), (100, 30.0))):
            trace = synthetic(n, rate, arrival="gamma", cv=1.5, prompt_len={"dist": "lognormal", "mean": 200, "sigma": 0.8, "max": 900},
                              output_len={"dist": "lognormal", "mean": 48, "sigma": 0.8, "max": 200}, seed=seed + 100 + k)  # fmt: skip
            phases.append([dataclasses.replace(r, request_id=f"cal-s{k}-{r.request_id}") for r in trace])
    return phases


@dataclass
class RealRun:
    """Records of one replay and the absolute (perf_counter) time of its clock's zero."""

    records: list[RequestRecord]
    t0: float
    requests: list[Request]


async def _replay(url: str, model: str, requests: list[Request]) -> RealRun:
    from workloads.loadgen import run_load

    done_at: list[float] = []  # perf_counter() of the k-th completion (the progress callback)

    def progress(done: int, total: int, in_flight: int) -> None:
        if done > len(done_at):
            done_at.append(time.perf_counter())

    records = [r for r in await run_load(url, model, requests, on_progress=progress) if not r.warmup]
    # The load generator's records are relative to its run clock; recover that clock's zero from
    # completion times (k-th callback = k-th request to end), robust to whatever runs before it.
    ends = sorted(r.actual_send_s + r.e2e_s for r in records if r.e2e_s is not None)
    t0 = statistics.median(cb - end for cb, end in zip(done_at, ends)) if ends else time.perf_counter()
    return RealRun(records, t0, requests)


def replay(url: str, model: str, requests: list[Request]) -> RealRun:
    """``workloads.loadgen`` replay that also returns the run's absolute clock origin."""
    return asyncio.run(_replay(url, model, requests))


def read_step_log(path: str | Path) -> tuple[dict[str, Any], list[dict], list[dict]]:
    config: dict[str, Any] = {}
    adds, steps = [], []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        ev = rec.pop("ev")
        if ev == "config":
            config = rec
        elif ev == "add":
            adds.append(rec)
        elif ev == "step":
            steps.append(rec)
    return config, adds, steps


@dataclass
class Cycle:
    """One busy engine step as the linear model sees it."""

    shape: BatchShape
    seconds: float  # schedule() start to the next schedule() start
    arrivals: int  # requests the engine took in before the next step: they reached it during this one
    new_shape: bool  # the first step with this token count since the server started


def step_cycles(steps: list[dict], adds: list[dict] = (), t_start: float = float("-inf"),
                t_end: float = float("inf")) -> list[Cycle]:  # fmt: skip
    """The cycles of the busy steps starting in [``t_start``, ``t_end``) that the next step
    followed at once (``busy``): a cycle runs from schedule() to the next schedule() and includes
    all engine-loop overhead. ``steps`` must be the whole log since the server started (first-run
    token counts are counted from there). Cycles whose gap after update_from_output() is far
    beyond the usual (the engine was blocked or idle, e.g. behind steps that scheduled nothing)
    are dropped."""
    import bisect

    import numpy as np

    seen: set[int] = set()
    first_run = []
    for s in steps:
        n = s["prefill"] + s["decode"]
        first_run.append(n not in seen)
        seen.add(n)
    add_t = sorted(a["t"] for a in adds)
    idx = [j for j in range(len(steps) - 1) if steps[j]["busy"] and t_start <= steps[j]["t0"] and steps[j + 1]["t0"] < t_end]
    if not idx:
        return []
    gaps = np.array([steps[j + 1]["t0"] - steps[j]["t3"] for j in idx])
    limit = 10 * float(np.median(gaps)) + 1e-3
    cycles = []
    for j, gap in zip(idx, gaps):
        if gap <= limit:
            a, b = steps[j], steps[j + 1]
            arrivals = bisect.bisect_left(add_t, b["t0"]) - bisect.bisect_left(add_t, a["t0"])
            shape = BatchShape(a["prefill"], a["decode"], a["num_reqs"], a["sum_context"], a["prefill_attn"])
            cycles.append(Cycle(shape, b["t0"] - a["t0"], arrivals, first_run[j]))
    return cycles


def num_tokens_run(steps: list[dict], before: float) -> set[int]:
    """Step token counts the server had run before time ``before`` (``simulate(warm_num_tokens=...)``)."""
    return {s["prefill"] + s["decode"] for s in steps if s["t0"] < before}


def engine_ready_times(adds: list[dict], steps: list[dict], idle_gap_s: float = 1e-3) -> list[float]:
    """When each request was ready for the engine, with the wait for a running step taken out.

    The engine core takes new requests only between steps, so a request that came in during a
    step is added when it ends; the simulator models that wait itself (it adds arrivals at step
    boundaries), so the front-end latency must not contain it too. A request added more than
    ``idle_gap_s`` after the last step ended found the engine idle: its add time is its ready
    time. For the others: the API server's timestamp (``t - front``) plus the API → scheduler
    transit measured on the idle ones that came alone (median; ~1.5 ms on 2 cores: ZMQ,
    decoding, block hashes)."""
    import bisect

    ends = [s["t3"] for s in steps]
    idle = []
    for a in adds:
        i = bisect.bisect_right(ends, a["t"]) - 1
        idle.append(i < 0 or a["t"] - ends[i] > idle_gap_s)
    # Transit from requests that came alone: the head of a burst waits while the API server
    # takes in the rest of the burst (measured 10-17 ms against ~1.5 ms alone).
    ts = [a["t"] for a in adds]
    alone = [(j == 0 or ts[j] - ts[j - 1] > 5e-3) and (j + 1 == len(ts) or ts[j + 1] - ts[j] > 5e-3) for j in range(len(ts))]
    fronts = [a["front"] for a, quiet, lone in zip(adds, idle, alone) if quiet and lone and "front" in a]
    transit = statistics.median(fronts) if fronts else 0.0
    return [a["t"] if quiet or "front" not in a else a["t"] - a["front"] + min(transit, a["front"])
            for a, quiet in zip(adds, idle)]  # fmt: skip


def request_latencies(runs: Sequence[RealRun], adds: list[dict], steps: list[dict]) -> tuple[list[float], list[float]]:
    """Per request: (client send → ready for the engine) and (engine first-token step end → client
    first token).

    "Step end" is the next step's start (see ``step_cycles``), matching the simulator, which
    emits a step's tokens at the end of its cycle.
    """
    add_t = {a["key"]: t for a, t in zip(adds, engine_ready_times(adds, steps))}
    first_end: dict[int, float] = {}
    for a, b in zip(steps, steps[1:]):
        end = b["t0"] if a["busy"] else a["t3"]
        for key in a["first"]:
            first_end.setdefault(key, end)
    lat_in, lat_out = [], []
    for run in runs:
        by_id = {r.request_id: r for r in run.requests}
        for rec in run.records:
            if not rec.ok or rec.ttft_s is None:
                continue
            key = prompt_key(by_id[rec.request_id].prompt_token_ids)
            send = run.t0 + rec.actual_send_s
            if key in add_t:
                lat_in.append(add_t[key] - send)
            if key in first_end:
                lat_out.append(send + rec.ttft_s - first_end[key])
    if not lat_in or not lat_out:
        raise RuntimeError("could not match any client request to the engine's step log")
    return lat_in, lat_out


def fit_profile(runs: Sequence[RealRun], step_log: str | Path, *, name: str, meta: dict | None = None,
                windows: Sequence[tuple[float, float]] | None = None) -> LinearModel:  # fmt: skip
    """Fit the step model on the steps logged while ``runs`` (the measured sweep's phases) were
    replayed, ``windows[i]`` = (start, end) of ``runs[i]`` (default: the whole log, one run).

    Front-end latencies and step noise come from the phases with timed arrivals (the Poisson mix
    and the sustained phases: the load an experiment puts on a server): per phase, then the
    median of each quantile over phases. Single requests (cold code paths: out-latency 5-7 ms
    against ~1.5 ms under load) and simultaneous bursts (API-server queueing) are not what a
    replayed trace sees, and the median over phases keeps one phase that a machine stall hit
    (measured: 10x the usual latencies, sim TTFT p90 2.4x the real one) from setting the tail."""
    config, adds, steps = read_step_log(step_log)
    if windows is None:
        windows = [(float("-inf"), float("inf"))] * len(runs)
    # One pass over the whole log per window: first-run token counts count from the server's start.
    cycles = [step_cycles(steps, adds, lo, hi) for lo, hi in windows]
    fitted = [c for cs in cycles for c in cs]
    profile = LinearModel.fit(
        [c.shape for c in fitted], [c.seconds for c in fitted], arrivals=[c.arrivals for c in fitted],
        new_shape=[c.new_shape for c in fitted], name=f"linear:{name}", meta={**(meta or {}), "engine": config},
        num_gpu_blocks=config.get("num_gpu_blocks"), block_size=config.get("block_size", 16),
    )  # fmt: skip
    loaded = [k for k, r in enumerate(runs) if r.requests and r.requests[-1].arrival_s > 0] or list(range(len(runs)))
    steps = [s for s in steps if s["t0"] >= min(lo for lo, _ in windows)]
    grid = np.linspace(0, 100, 21)
    per_run = [request_latencies([runs[k]], adds, steps) for k in loaded]
    q_in = np.median([np.percentile(li, grid) for li, _ in per_run], axis=0)
    q_out = np.median([np.percentile(lo, grid) for _, lo in per_run], axis=0)
    ratios = [np.array([c.seconds / cycle_time(profile, c.shape, arrivals=c.arrivals, new_shape=c.new_shape)
                        for c in cycles[k]]) for k in loaded]  # fmt: skip
    noise = fit_step_noise([r for r in ratios if len(r)])
    return dataclasses.replace(
        profile, request_latency_in_s=float(q_in[10]), request_latency_out_s=float(q_out[10]),
        latency_in_quantiles=[float(x) for x in q_in], latency_out_quantiles=[float(x) for x in q_out], **noise,
    )  # fmt: skip


def fit_step_noise(ratio_runs: Sequence[np.ndarray], window: int = 41,
                   spans: Sequence[int] = (1, 2, 5, 10, 20, 50, 100)) -> dict[str, Any]:  # fmt: skip
    """``LinearModel`` noise fields (``StepNoise``) from per-phase series of measured/predicted
    step ratios, in time order.

    Drift: what matters to a queue is how slow a stretch of steps is, so the variance of the mean
    log ratio over ``spans`` consecutive steps is fitted as jitter/k + drift·g(phi, k) (g: the
    mean of phi^|i-j| over a k-step window), least squares in relative terms over a grid of phi.
    On the CPU box: drift sd ≈ 0.15, phi ≈ 0.99 (a 100-step stretch runs 15-20% slow one time in
    ten). Jitter: each ratio divided by the running median of its ``window`` neighbours (the local
    speed), quantiles at ``NOISE_PROBS``; scaled so that a step's expected multiplier is 1."""
    from simulator.noise import NOISE_PROBS

    runs = [np.asarray(r, dtype=float) for r in ratio_runs if len(r)]
    if not runs:
        return {}
    half = window // 2
    jitter, var_k, weight_k = [], np.zeros(len(spans)), np.zeros(len(spans))
    for r in runs:
        x = np.log(r)
        local = np.array([np.median(x[max(0, t - half): t + half + 1]) for t in range(len(x))])
        jitter.append(np.exp(x - local))
        x = x - x.mean()
        for i, k in enumerate(spans):
            if len(x) >= 4 * k:
                m = np.convolve(x, np.ones(k) / k, mode="valid")
                var_k[i] += float(m @ m) / len(m) * len(x)
                weight_k[i] += len(x)
    ok = weight_k > 0
    v, ks = var_k[ok] / weight_k[ok], np.asarray(spans, dtype=float)[ok]
    phi, drift_var = 0.0, 0.0
    if len(v) >= 3:
        best = float("inf")
        for cand in np.linspace(0.5, 0.999, 500):
            g = np.array([(k + 2 * sum((k - l) * cand**l for l in range(1, int(k)))) / k**2 for k in ks])
            a = np.column_stack([1 / ks, g]) / v[:, None]  # relative errors: every span counts
            coef = _nonneg_lstsq(a, np.ones(len(v)), [0, 1])
            err = float(((a @ coef - 1) ** 2).sum())
            if err < best:
                best, phi, drift_var = err, float(cand), float(coef[1])
    drift_sd = float(np.sqrt(drift_var))
    probs = np.asarray(NOISE_PROBS)
    q = np.quantile(np.concatenate(jitter), probs)
    mean_j = float((np.diff(probs) * (q[:-1] + q[1:]) / 2).sum())  # of the piecewise-linear quantile function
    q = q / (mean_j * np.exp(drift_sd**2 / 2))  # E[exp(drift)] = exp(sd²/2)
    return {"noise_quantiles": [float(v) for v in q], "noise_probs": list(NOISE_PROBS), "noise_phi": phi,
            "noise_drift_sd": drift_sd}  # fmt: skip


@dataclass
class Calibration:
    profile: LinearModel
    runs: list[RealRun]  # replays of ``extra_workloads``
    step_log: Path
    sweep_runs: list[RealRun] = dataclasses.field(default_factory=list)  # the measured sweep's phases


def calibrate(
    model_dir: str | Path,
    *,
    name: str,
    server_args: Sequence[str] = DEFAULT_SERVER_ARGS,
    extra_workloads: Sequence[list[Request]] = (),
    policy: str = "fcfs",
    policy_args: dict | None = None,
    seed: int = 0,
) -> Calibration:
    """Start a timed server, replay the sweep, fit.

    ``extra_workloads`` (e.g. a held-out fidelity workload, measured on the same server start to
    save one start-up) are replayed in order between the measured sweep's phases, spread over its time:
    on a shared machine the engine's speed drifts by up to ±20% over ~10 s, and interleaving lets
    the fitted steps and the extra replays sample the same stretch of it. Returns their runs too,
    and the step log.
    """
    from serving.server import VLLMServer
    from workloads.prompts import materialize

    phases = sweep_workload(seed)
    for p in (*phases, *extra_workloads):
        materialize(p, model_dir, seed=seed)
    # The sweep is replayed twice and only the second pass is fitted: on a fresh server the CPU
    # backend is still building kernels and buffers for batch shapes it has not seen (measured:
    # decode steps of the cold sweep 20-60% slower than the same shapes later), and the simulator
    # models a warm server. The warm-up pass has its own prompts (no prefix-cache hits) and leaves
    # out the long sustained phases (the fit's first-run term covers the shapes only they bring).
    quiet = sweep_workload(seed, sustained=False)  # phases[:len(quiet)]
    warmup = [[dataclasses.replace(r, request_id="w" + r.request_id, prompt=None, prompt_token_ids=None) for r in p]
              for p in quiet]  # fmt: skip
    for p in warmup:
        materialize(p, model_dir, seed=seed + 1)
    log = Path(tempfile.mkdtemp(prefix="schedlab-calib-")) / "steps.jsonl"
    import policies

    args = policies.vllm_args(policy, policy_args)
    args[args.index("--scheduler-cls") + 1] = STEP_TIMER_CLS  # a PolicyScheduler subclass
    args += list(server_args)
    with VLLMServer(model_dir, extra_args=args, env={ENV_VAR: str(log)}) as server:
        for p in warmup:
            replay(server.url, server.model_name, p)
        # Extra workload j goes after the phase where (j+1)/(m+1) of the sweep's time has passed.
        ends = np.cumsum([max(r.arrival_s for r in p) + 0.5 for p in phases])
        after = [int(np.searchsorted(ends, (j + 1) / (len(extra_workloads) + 1) * ends[-1])) + 1
                 for j in range(len(extra_workloads))]  # fmt: skip
        sweep_runs, extra_runs, windows = [], [], []
        for i, p in enumerate(phases, 1):
            start = time.perf_counter()
            sweep_runs.append(replay(server.url, server.model_name, p))
            windows.append((start, time.perf_counter()))
            extra_runs += [replay(server.url, server.model_name, w) for w, a in zip(extra_workloads, after) if a == i]
        time.sleep(0.5)  # the step log is flushed when the engine goes idle
    meta = {"model_dir": str(model_dir), "server_args": list(server_args), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "num_requests": sum(len(p) for p in phases)}  # fmt: skip
    profile = fit_profile(sweep_runs, log, name=name, meta=meta, windows=windows)
    return Calibration(profile, extra_runs, log, sweep_runs)


def main(argv: Sequence[str] | None = None) -> None:
    from serving.models import MODEL_PRESETS, write_model_dir

    ap = argparse.ArgumentParser(prog="python -m simulator.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=sorted(MODEL_PRESETS))
    ap.add_argument("--name", default=None, help="profile name (default: <device>_<model>)")
    ap.add_argument("--out-dir", default=str(PROFILE_DIR))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("server_args", nargs="*", help="extra vllm serve args (after --), replacing the defaults")
    a = ap.parse_args(argv)
    from serving.server import vllm_build

    name = a.name or f"{vllm_build()}_{a.model}"
    profile = calibrate(write_model_dir(a.model), name=name, server_args=a.server_args or DEFAULT_SERVER_ARGS, seed=a.seed).profile
    path = profile.save(Path(a.out_dir) / f"{name}.yaml")
    print(f"saved {path}")
    print(f"t = {profile.c0 * 1e3:.3f} ms + {profile.c1 * 1e6:.3f} us·prefill + {profile.c2 * 1e6:.3f} us·decode "
          f"+ {profile.c3 * 1e9:.3f} ns·Σcontext + {profile.c4 * 1e3:.3f} ms·[prefill] + {profile.c5 * 1e3:.3f} ms·arrival "
          f"+ {profile.c6 * 1e6:.2f} us·new-shape token  (r2={profile.meta['r2']:.3f}, "
          f"median rel err {profile.meta['median_rel_err']:.1%}, {profile.meta['num_steps']} steps)")  # fmt: skip
    print(f"request latency in {profile.request_latency_in_s * 1e3:.2f} ms, out {profile.request_latency_out_s * 1e3:.2f} ms; "
          f"engine {profile.meta['engine']}")  # fmt: skip
    if profile.noise_quantiles:
        q = dict(zip(profile.noise_probs, profile.noise_quantiles))
        print(f"step noise: jitter p50 {q[0.5]:.2f}, p99 {q[0.99]:.2f}, max {q[1.0]:.2f}; drift sd {profile.noise_drift_sd:.2f} "
              f"(log), phi {profile.noise_phi:.3f} per step")  # fmt: skip


if __name__ == "__main__":
    main()
