"""Sim vs real vLLM on CPU: calibrate, then compare on a held-out workload; prints the errors.

    flock /tmp/schedlab-vllm.lock .venv/bin/python benchmarks/sim_fidelity.py [--save-profile]

One server start (~40-60 s) + ~30 s of load. Target: every metric within 10% (goal 5%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-profile", action="store_true", help="also save the fitted profile as conf/step_model/cpu_tiny_fidelity.yaml")
    ap.add_argument("--requests", type=int, default=80)
    a = ap.parse_args()

    from orchestrator.models import write_model_dir
    from simulator import simulate
    from simulator.calibrate import calibrate
    from simulator.fidelity import SERVER_ARGS, Comparison, heldout_workload, real_summary, sim_kwargs, step_model_ratio
    from simulator.step_model import PROFILE_DIR

    model_dir = write_model_dir("tiny")
    heldout = heldout_workload(a.requests)
    # A warm-up replay of the same workload with fresh prompts first: the CPU backend compiles
    # kernels for batch shapes it has not seen, which a cold replay pays in TTFT.
    import dataclasses

    warm = [dataclasses.replace(r, request_id="warm-" + r.request_id) for r in heldout]
    cal = calibrate(model_dir, name="cpu_tiny_fidelity", server_args=SERVER_ARGS, extra_workloads=[warm, heldout])
    p = cal.profile
    print(f"profile: t = {p.c0 * 1e3:.3f} ms + {p.c1 * 1e6:.2f} us/prefill tok + {p.c2 * 1e6:.2f} us/decode tok "
          f"+ {p.c3 * 1e9:.3f} ns/ctx tok + {p.c4 * 1e3:.3f} ms/prefill step + {p.c5 * 1e3:.3f} ms/arrival "
          f"+ {p.c6 * 1e6:.2f} us/tok of a new shape; r2={p.meta['r2']:.3f}; "
          f"latency in {p.request_latency_in_s * 1e3:.2f} ms, out {p.request_latency_out_s * 1e3:.2f} ms")
    if a.save_profile:
        print("saved", p.save(PROFILE_DIR / "cpu_tiny_fidelity.yaml"))
    real = real_summary(cal.runs[1], cal.step_log)
    res = simulate(heldout, model_dir=model_dir, step_model=p, **sim_kwargs(p, cal.runs[1], cal.step_log))
    cmp = Comparison(real, res.summary)
    print(f"held-out workload: {len(heldout)} requests; sim wall {res.wall_s:.2f} s")
    print(cmp.table())
    print("real vs real (the warm-up replay: same workload, fresh prompts)")
    print(Comparison(real, real_summary(cal.runs[0], cal.step_log)).table())
    print(f"step model on the held-out replay's own steps: predicted/measured {step_model_ratio(p, cal.runs[1], cal.step_log):.3f}")
    print(f"step log: {cal.step_log}")


if __name__ == "__main__":
    main()
