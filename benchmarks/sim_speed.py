"""Simulator speed: a 10,000-request Poisson trace on the Llama-3.1-8B-shaped model, H100 roofline.

    .venv/bin/python benchmarks/sim_speed.py [--requests 10000] [--rate 40] [--profile]

Prints wall time of ``simulate`` (vLLM imports excluded, printed separately), the number of engine
steps and decoded tokens, and the ratio simulated time / wall time. Target: <= 30 s wall on a
2-core machine. ``--profile`` prints the top functions by own time (cProfile).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=40.0, help="Poisson arrival rate, req/s")
    ap.add_argument("--prompt-len", default="lognormal:512:0.8")
    ap.add_argument("--output-len", default="lognormal:128:0.8")
    ap.add_argument("--policy", default="fcfs")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()

    t_import = time.perf_counter()
    from serving.models import write_model_dir
    from simulator import simulate
    from simulator.build import build_scheduler  # noqa: F401  (imports vLLM)
    from workloads.synthetic import synthetic

    t_import = time.perf_counter() - t_import
    model_dir = write_model_dir("llama3_8b")
    trace = list(synthetic(a.requests, a.rate, prompt_len={"dist": "lognormal", "mean": float(a.prompt_len.split(":")[1]),
                                                         "sigma": float(a.prompt_len.split(":")[2]), "max": 8000},
                           output_len={"dist": "lognormal", "mean": float(a.output_len.split(":")[1]),
                                       "sigma": float(a.output_len.split(":")[2]), "max": 4000}, seed=0))  # fmt: skip
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu0 = time.process_time()
    res = simulate(trace, model_dir=model_dir, policy=a.policy, step_model="roofline:h100")
    cpu = time.process_time() - cpu0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    s = res.summary
    tokens = sum(r.output_tokens for r in res.records)
    print(f"requests {len(trace)}  output tokens {tokens}  steps {res.num_steps}  preemptions {res.num_preemptions}")
    print(f"simulated {res.sim_duration_s:.1f} s  |  wall {res.wall_s:.1f} s (cpu {cpu:.1f} s; vLLM import {t_import:.1f} s)"
          f"  |  sim/wall {res.sim_duration_s / res.wall_s:.1f}x  |  {res.num_steps / res.wall_s:.0f} steps/s, "
          f"{tokens / res.wall_s / 1e3:.0f}k tokens/s")  # fmt: skip
    print(f"ttft p50 {s['ttft_ms_p50']:.1f} ms  p99 {s['ttft_ms_p99']:.1f} ms  tpot p50 {s['tpot_ms_p50']:.2f} ms  "
          f"throughput {s['output_token_throughput']:.0f} tok/s  kv usage max {s['server_kv_cache_usage_max']:.2f}")


if __name__ == "__main__":
    main()
