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
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from simulator.fit import fit_profile
from simulator.linear import LinearModel
from simulator.load import PROFILE_DIR
from simulator.step_timer import ENV_VAR
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
    runs much slower in one short burst than in another, and only long phases average that
    (docs/simulator.md, "Calibration")."""
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


def replay_with_clock(url: str, model: str, requests: list[Request]) -> RealRun:
    """``workloads.loadgen`` replay that also returns the run's absolute clock origin."""
    return asyncio.run(_replay(url, model, requests))

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
    save one start-up) are replayed in order between the measured sweep's phases, spread over its
    time: on a shared machine the engine's speed drifts over seconds (docs/simulator.md,
    "Fidelity"), and interleaving lets the fitted steps and the extra replays sample the same
    stretch of it. Returns their runs too, and the step log.
    """
    from serving.server import VLLMServer
    from workloads.prompts import materialize

    phases = sweep_workload(seed)
    for p in (*phases, *extra_workloads):
        materialize(p, model_dir, seed=seed)
    warmup = _warmup_phases(model_dir, seed)
    log = Path(tempfile.mkdtemp(prefix="schedlab-calib-")) / "steps.jsonl"
    import policies

    args = policies.vllm_args(policy, policy_args)
    args[args.index("--scheduler-cls") + 1] = STEP_TIMER_CLS  # a PolicyScheduler subclass
    args += list(server_args)
    with VLLMServer(model_dir, extra_args=args, env={ENV_VAR: str(log)}) as server:
        for p in warmup:
            replay_with_clock(server.url, server.model_name, p)
        sweep_runs, extra_runs, windows = _replay_interleaved(server, phases, extra_workloads)
        time.sleep(0.5)  # the step log is flushed when the engine goes idle
    meta = {"model_dir": str(model_dir), "server_args": list(server_args), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "num_requests": sum(len(p) for p in phases)}  # fmt: skip
    profile = fit_profile(sweep_runs, log, name=name, meta=meta, windows=windows)
    return Calibration(profile, extra_runs, log, sweep_runs)


def _warmup_phases(model_dir: str | Path, seed: int) -> list[list[Request]]:
    """The sweep's quiet phases again, with their own prompts, replayed unmeasured first.

    Only the second pass is fitted: on a fresh server the CPU backend is still building kernels and
    buffers for batch shapes it has not seen (its decode steps run markedly slower than the same
    shapes later: docs/simulator.md), and the simulator models a warm server. Own prompts: no
    prefix-cache hits with the measured pass; no sustained phases: the fit's first-run term covers
    the shapes only they bring."""
    from workloads.prompts import materialize

    quiet = sweep_workload(seed, sustained=False)  # phases[:len(quiet)]
    warmup = [[dataclasses.replace(r, request_id="w" + r.request_id, prompt=None, prompt_token_ids=None) for r in p]
              for p in quiet]  # fmt: skip
    for p in warmup:
        materialize(p, model_dir, seed=seed + 1)
    return warmup


def _replay_interleaved(server, phases: list[list[Request]], extra_workloads: Sequence[list[Request]]):
    """Replay the sweep's phases, each extra workload after the phase where its share of the sweep's
    time has passed (workload j of m: (j+1)/(m+1)); return the sweep's runs, the extra runs and
    each phase's (start, end) window on the step log's clock."""
    ends = np.cumsum([max(r.arrival_s for r in p) + 0.5 for p in phases])
    after = [int(np.searchsorted(ends, (j + 1) / (len(extra_workloads) + 1) * ends[-1])) + 1
             for j in range(len(extra_workloads))]  # fmt: skip
    sweep_runs, extra_runs, windows = [], [], []
    for i, p in enumerate(phases, 1):
        start = time.perf_counter()
        sweep_runs.append(replay_with_clock(server.url, server.model_name, p))
        windows.append((start, time.perf_counter()))
        extra_runs += [replay_with_clock(server.url, server.model_name, w) for w, a in zip(extra_workloads, after) if a == i]
    return sweep_runs, extra_runs, windows


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
