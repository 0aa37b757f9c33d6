"""Sim vs real vLLM on CPU: calibrate, then compare on a held-out workload; prints the errors.

    flock /tmp/schedlab-vllm.lock .venv/bin/python benchmarks/sim_fidelity.py [--save-profile]

One server start (~30 s) + ~70 s of load (calibration sweep twice, held-out workload 1 + 3 times). Target: every metric within 10% (goal 5%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-profile", action="store_true", help="also save the fitted profile as conf/step_model/cpu_tiny_fidelity.yaml")
    ap.add_argument("--requests", type=int, default=80, help="held-out requests per replay")
    ap.add_argument("--replays", type=int, default=3, help="measured real replays (and sim runs) pooled")
    a = ap.parse_args()

    from orchestrator.models import write_model_dir
    from simulator.calibrate import calibrate
    from simulator.fidelity import (SERVER_ARGS, Comparison, heldout_replays, real_pooled, self_spread, sim_kwargs,
                                    sim_pooled, step_model_ratio)  # fmt: skip
    from simulator.step_model import PROFILE_DIR

    model_dir = write_model_dir("tiny")
    # The first copy warms the server up: the CPU backend builds kernels for batch shapes it has
    # not seen, which a cold replay pays in TTFT.
    replays = heldout_replays(a.replays, num_requests=a.requests)
    cal = calibrate(model_dir, name="cpu_tiny_fidelity", server_args=SERVER_ARGS, extra_workloads=replays)
    p = cal.profile
    print(f"profile: t = {p.c0 * 1e3:.3f} ms + {p.c1 * 1e6:.2f} us/prefill tok + {p.c2 * 1e6:.2f} us/decode tok "
          f"+ {p.c3 * 1e9:.3f} ns/ctx tok + {p.c4 * 1e3:.3f} ms/prefill step + {p.c5 * 1e3:.3f} ms/arrival "
          f"+ {p.c6 * 1e6:.2f} us/tok of a new shape; r2={p.meta['r2']:.3f}; "
          f"latency in {p.request_latency_in_s * 1e3:.2f} ms, out {p.request_latency_out_s * 1e3:.2f} ms")
    if a.save_profile:
        print("saved", p.save(PROFILE_DIR / "cpu_tiny_fidelity.yaml"))
    measured = cal.runs[1:]
    real, each = real_pooled(measured, cal.step_log)
    sim = sim_pooled(replays[0], model_dir, p, a.replays, **sim_kwargs(p, measured[0], cal.step_log))
    spread = self_spread(real, each)
    print(f"held-out workload: {a.requests} requests, {a.replays} real replays and {a.replays} sim runs pooled")
    print(Comparison(real, sim).table())
    print("real replays vs their pool (largest distance of one replay): "
          + ", ".join(f"{m} {v:.1%}" for m, v in spread.items()))
    for k, e in enumerate(each, 1):
        print(f"  real replay {k}: " + ", ".join(f"{m} {e[m]:.2f}" for m in spread))
    ratios = [step_model_ratio(p, run, cal.step_log) for run in measured]
    print("step model on each replay's own steps, predicted/measured: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"step log: {cal.step_log}")


if __name__ == "__main__":
    main()
