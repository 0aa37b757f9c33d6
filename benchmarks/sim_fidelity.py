"""Sim vs real vLLM on CPU: calibrate, then compare on a held-out workload; prints the errors.

    flock /tmp/schedlab-vllm.lock .venv/bin/python benchmarks/sim_fidelity.py [--save-profile]

One server start (~30 s) + ~80 s of load (calibration sweep twice, held-out workload 1 + 5 times). Target: every metric within 10% (goal 5%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from simulator.fidelity import HELDOUT_REPLAYS, SIM_RUNS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-profile", action="store_true", help="also save the fitted profile as simulator/profiles/cpu_tiny_fidelity.yaml")
    ap.add_argument("--requests", type=int, default=80, help="held-out requests per replay")
    ap.add_argument("--replays", type=int, default=HELDOUT_REPLAYS, help="measured real replays pooled")
    ap.add_argument("--sim-runs", type=int, default=SIM_RUNS, help="simulated runs (seeds) pooled")
    a = ap.parse_args()

    from serving.models import write_model_dir
    from simulator.calibrate import calibrate
    from simulator.fidelity import (SERVER_ARGS, Comparison, heldout_replays, real_pooled, real_pooled_unstalled,
                                    self_spread, sim_kwargs, sim_pooled, step_model_ratio)  # fmt: skip
    from simulator.load import PROFILE_DIR

    model_dir = write_model_dir("tiny")
    # The first copy warms the server up: the CPU backend builds kernels for batch shapes it has
    # not seen, which a cold replay pays in TTFT.
    replays = heldout_replays(a.replays, num_requests=a.requests)
    cal = calibrate(model_dir, name="cpu_tiny_fidelity", server_args=SERVER_ARGS, extra_workloads=replays)
    p = cal.profile
    print(f"profile: t = {p.c0 * 1e3:.3f} ms + {p.c1 * 1e6:.2f} us/prefill tok + {p.c2 * 1e6:.2f} us/decode tok "
          f"+ {p.c3 * 1e9:.3f} ns/ctx tok + {p.c4 * 1e3:.3f} ms/prefill step + {p.c5 * 1e3:.3f} ms/arrival "
          f"+ {p.c6 * 1e6:.2f} us/tok of a new shape; r2={p.meta['r2']:.3f}; "
          f"latency in {p.request_latency_in_s * 1e3:.2f} ms, out {p.request_latency_out_s * 1e3:.2f} ms; "
          f"step jitter p50/p99/max {_q(p, 0.5):.2f}/{_q(p, 0.99):.2f}/{_q(p, 1.0):.2f}x, drift sd {p.noise_drift_sd:.2f} "
          f"(phi {p.noise_phi:.3f})")
    if a.save_profile:
        print("saved", p.save(PROFILE_DIR / "cpu_tiny_fidelity.yaml"))
    measured = cal.runs[1:]
    real, each = real_pooled(measured, cal.step_log)
    sim, sim_each = sim_pooled(replays[0], model_dir, p, a.sim_runs, **sim_kwargs(p, measured[0], cal.step_log))
    spread = self_spread(real, each)
    print(f"held-out workload: {a.requests} requests, {a.replays} real replays and {a.sim_runs} sim runs pooled")
    print(Comparison(real, sim).table())
    print("real replays vs their pool (largest distance of one replay): "
          + ", ".join(f"{m} {v:.1%}" for m, v in spread.items()))
    for k, e in enumerate(each, 1):
        print(f"  real replay {k}: " + ", ".join(f"{m} {e[m]:.2f}" for m in spread))
    # The sim is not one number either: its seeds vary as real replays do (step noise, latencies).
    first = sim_each[: len(each)]
    print(f"single runs, min-max over {len(each)} (real replays | first {len(first)} sim seeds): " + "; ".join(
        f"{m} {min(e[m] for e in each):.2f}-{max(e[m] for e in each):.2f} | {min(e[m] for e in first):.2f}-{max(e[m] for e in first):.2f}"
        for m in ("ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50")))  # fmt: skip
    unstalled, left_out = real_pooled_unstalled(measured)
    total = sum(len(run.records) for run in measured)
    print(f"real requests whose timings include a client stall (load generator not running > 20 ms): {left_out} of {total}; "
          f"without them: " + ", ".join(f"{m} {Comparison(unstalled, sim).rel_err(m):.1%}" for m in
                                         ("ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50")))  # fmt: skip
    ratios = [step_model_ratio(p, run, cal.step_log) for run in measured]
    print("step model on each replay's own steps, predicted/measured: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"step log: {cal.step_log}")


def _q(profile, prob: float) -> float:
    return dict(zip(profile.noise_probs, profile.noise_quantiles)).get(prob, 1.0)


if __name__ == "__main__":
    main()
