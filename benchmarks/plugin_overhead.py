"""Scheduler overhead of the policy plugin: time spent in add_request() + schedule() + update_from_output()
with each policy/allocator vs stock vLLM's Scheduler on the same 2,000-request trace (in-process, no model).

    .venv/bin/python benchmarks/plugin_overhead.py [--requests 2000] [--repeats 3] [--only tenant_quota sjf ...]

Targets: fcfs/default <= 1.05x stock, every other built-in <= 1.3x.
Timing is CPU time of this process (``time.process_time``), and each case is measured interleaved
with stock runs (stock, case, stock, case, ...; best of each), so other load on the machine
distorts the ratios as little as possible. The target is on the whole-trace ratio; a policy's
decisions change the step count and the batch sizes (``tenant_quota`` runs more, smaller steps),
so ``per-step`` is shown for context, not as a pure overhead figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

import policies  # noqa: E402
from serving.models import write_model_dir  # noqa: E402
from policies.driver import fake_model_output  # noqa: E402
from policies.inprocess import make_request, make_scheduler  # noqa: E402

CONFIG = dict(num_blocks=1024, max_num_seqs=128, max_num_batched_tokens=2048)
ARRIVALS_PER_STEP = 4


def trace(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    shared = [[rng.randint(3, 500) for _ in range(256)] for _ in range(8)]  # some prefix-cache hits
    out = []
    for i in range(n):
        prompt = rng.choice(shared)[: rng.choice([0, 64, 128])] + [rng.randint(3, 500) for _ in range(rng.randint(16, 384))]
        out.append(dict(request_id=f"r{i}", prompt_token_ids=prompt, max_tokens=rng.randint(8, 256), arrival_time=i * 0.01,
                        priority=rng.randint(0, 3), extra_args={"tenant": rng.choice("ABCD"), "deadline_s": rng.uniform(1, 30),
                                                                 "output_len_hint": rng.randint(8, 256)}))
    return out


def timed_run(sched, reqs: list[dict]) -> tuple[float, int]:
    pending = [make_request(**r) for r in reqs]
    busy, steps = 0.0, 0
    while pending or sched.has_requests():
        t0 = time.process_time()
        for r in pending[:ARRIVALS_PER_STEP]:
            sched.add_request(r)  # timed too: policies' queues do work on insertion
        del pending[:ARRIVALS_PER_STEP]
        so = sched.schedule()
        t1 = time.process_time()
        mro = fake_model_output(sched, so)
        t2 = time.process_time()
        sched.update_from_output(so, mro)
        busy += (t1 - t0) + (time.process_time() - t2)
        steps += 1
    return busy, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only the cases with these policy/allocator names")
    args = ap.parse_args()
    model_dir = write_model_dir("tiny", tempfile.mkdtemp())
    reqs = trace(args.requests)

    def stock():
        return make_scheduler(model_dir, scheduler_cls=Scheduler, **CONFIG)

    def paired(build) -> tuple[float, int, float, int]:
        """Best of ``repeats`` for the case and for stock, measured alternately."""
        case_runs, stock_runs = [], []
        for _ in range(args.repeats):
            stock_runs.append(timed_run(stock(), reqs))
            case_runs.append(timed_run(build(), reqs))
        return min(case_runs)[0], case_runs[0][1], min(stock_runs)[0], stock_runs[0][1]

    timed_run(stock(), reqs)  # warm-up
    _, _, stock_s, stock_steps = paired(stock)
    print(f"stock vLLM Scheduler: {stock_s:.3f} s CPU in add_request()+schedule()+update_from_output() over {stock_steps} steps "
          f"({1e6 * stock_s / stock_steps:.0f} us/step), {args.requests} requests")
    print("ratio = total time / stock's (same trace); per-step = us/step / stock's (policies change the step count)")
    print(f"{'policy':<10} {'allocator':<12} {'seconds':>8} {'steps':>6} {'ratio':>6} {'per-step':>8}  target")
    cases = [(p, "default") for p in policies.SCHEDULING_POLICIES]
    cases += [("fcfs", a) for a in policies.BLOCK_ALLOCATORS if a != "default"]
    if args.only:
        unknown = set(args.only) - {name for case in cases for name in case}
        if unknown:
            ap.error(f"--only: unknown names {sorted(unknown)}")
        cases = [c for c in cases if set(c) & set(args.only)]
    for policy, allocator in cases:
        alloc_args = {"quota_blocks": 256} if allocator == "tenant_quota" else None
        cfg = policies.schedlab_config(policy, None, allocator, alloc_args)
        s, steps, stock_s, stock_steps = paired(
            lambda: make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(), additional_config=cfg, **CONFIG))
        target = 1.05 if (policy, allocator) == ("fcfs", "default") else 1.3
        ratio = s / stock_s
        per_step = (s / steps) / (stock_s / stock_steps)
        print(f"{policy:<10} {allocator:<12} {s:8.3f} {steps:6d} {ratio:6.3f} {per_step:8.3f}  <= {target} {'ok' if ratio <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
