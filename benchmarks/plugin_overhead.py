"""Scheduler overhead of the policy plugin: time spent in add_request() + schedule() + update_from_output()
with each policy / allocator / eviction policy vs stock vLLM's Scheduler on the same 2,000-request
trace (in-process, no model), at GPU-sized settings by default (an H100-sized KV cache).

    .venv/bin/python benchmarks/plugin_overhead.py [--num-blocks 32768] [--max-num-seqs 256]
        [--max-num-batched-tokens 8192] [--requests 2000] [--arrivals-per-step 8] [--repeats 3]
        [--only tenant_quota sjf lfu ...]

Targets: fcfs/default <= 1.05x stock, every other built-in <= 1.3x; each line ends in ok or MISSED.
Timing is CPU time of this process (``time.process_time``), and each case is measured interleaved
with stock runs (stock, case, stock, case, ...; best of each), so other load on the machine
distorts the ratios as little as possible. The target is on the whole-trace ratio; a policy's
decisions change the step count and the batch sizes (``tenant_quota`` runs more, smaller steps),
so ``per-step`` is shown for context, not as a pure overhead figure.
"""

from __future__ import annotations

import argparse
import gc
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

ALLOCATOR_ARGS = {"tenant_quota": {"quota_blocks": 8192}, "tenant_partition": {"tenants": ["A", "B", "C", "D"]}}


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


def timed_run(sched, reqs: list[dict], arrivals_per_step: int) -> tuple[float, int]:
    pending = [make_request(**r) for r in reqs]
    gc.collect()
    gc.freeze()  # as vLLM's engine core does after start-up: 32k KV blocks are not scanned by every GC pass
    try:
        return _timed_steps(sched, pending, arrivals_per_step)
    finally:
        gc.unfreeze()


def _timed_steps(sched, pending: list, arrivals_per_step: int) -> tuple[float, int]:
    busy, steps = 0.0, 0
    if hasattr(sched, "clock"):  # policies' now(): the trace's time (request i arrives at i * 0.01 s)
        sched.clock = lambda: steps * arrivals_per_step * 0.01
    while pending or sched.has_requests():
        t0 = time.process_time()
        for r in pending[:arrivals_per_step]:
            sched.add_request(r)  # timed too: policies' queues do work on insertion
        del pending[:arrivals_per_step]
        so = sched.schedule()
        t1 = time.process_time()
        mro = fake_model_output(sched, so)
        t2 = time.process_time()
        sched.update_from_output(so, mro)
        busy += (t1 - t0) + (time.process_time() - t2)
        steps += 1
    return busy, steps


def cases() -> list[tuple[str, str, dict | None]]:
    """(policy, allocator, allocator_args): every policy with the default allocator, every allocator
    with fcfs, every eviction policy with fcfs and vLLM's placement."""
    out = [(p, "default", None) for p in policies.SCHEDULING_POLICIES]
    out += [("fcfs", a, ALLOCATOR_ARGS.get(a)) for a in policies.BLOCK_ALLOCATORS if a != "default"]
    out += [("fcfs", "default", {"eviction": e}) for e in policies.EVICTION_POLICIES if e != "lru"]
    return out


def label(case: tuple[str, str, dict | None]) -> str:
    """The name that sets a case apart from fcfs/default/lru (``fcfs`` for that baseline)."""
    policy, allocator, alloc_args = case
    return (alloc_args or {}).get("eviction") or (allocator if allocator != "default" else policy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-blocks", type=int, default=32768, help="KV cache blocks (an H100 with an 8B model: ~32k)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--arrivals-per-step", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these cases (a policy, allocator or eviction policy name each)")
    args = ap.parse_args()
    for flag in ("num_blocks", "max_num_seqs", "max_num_batched_tokens", "requests", "arrivals_per_step", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    config = dict(num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    model_dir = write_model_dir("tiny", tempfile.mkdtemp())
    reqs = trace(args.requests)

    def stock():
        return make_scheduler(model_dir, scheduler_cls=Scheduler, **config)

    def paired(build) -> tuple[float, int, float, int]:
        """Best of ``repeats`` for the case and for stock, measured alternately."""
        case_runs, stock_runs = [], []
        for _ in range(args.repeats):
            stock_runs.append(timed_run(stock(), reqs, args.arrivals_per_step))
            case_runs.append(timed_run(build(), reqs, args.arrivals_per_step))
        return min(case_runs)[0], case_runs[0][1], min(stock_runs)[0], stock_runs[0][1]

    todo = cases()
    if args.only:
        unknown = set(args.only) - {label(c) for c in todo}
        if unknown:
            ap.error(f"--only: unknown names {sorted(unknown)}")
        todo = [c for c in todo if label(c) in args.only]

    timed_run(stock(), reqs, args.arrivals_per_step)  # warm-up
    _, _, stock_s, stock_steps = paired(stock)
    print(f"{args.num_blocks} KV blocks, max_num_seqs {args.max_num_seqs}, max_num_batched_tokens "
          f"{args.max_num_batched_tokens}, {args.requests} requests, {args.arrivals_per_step} arrivals/step")
    print(f"stock vLLM Scheduler: {stock_s:.3f} s CPU in add_request()+schedule()+update_from_output() over {stock_steps} steps "
          f"({1e3 * stock_s / stock_steps:.2f} ms/step)")
    print("ratio = total time / stock's, both best of --repeats, measured alternately (same trace); "
          "per-step = ms/step / stock's (policies change the step count)")
    print(f"{'policy':<10} {'allocator':<17} {'eviction':<13} {'seconds':>8} {'steps':>6} {'ms/step':>8} "
          f"{'stock ms':>8} {'ratio':>6} {'per-step':>8}  target")
    for policy, allocator, alloc_args in todo:
        cfg = policies.schedlab_config(policy, None, allocator, alloc_args)
        s, steps, stock_s, stock_steps = paired(
            lambda: make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(), additional_config=cfg, **config))
        eviction = (alloc_args or {}).get("eviction") or policies.block_allocator_class(allocator).eviction
        target = 1.05 if (policy, allocator, eviction) == ("fcfs", "default", "lru") else 1.3
        ratio = s / stock_s
        per_step = (s / steps) / (stock_s / stock_steps)
        print(f"{policy:<10} {allocator:<17} {eviction:<13} {s:8.3f} {steps:6d} {1e3 * s / steps:8.2f} "
              f"{1e3 * stock_s / stock_steps:8.2f} {ratio:6.3f} {per_step:8.3f}  <= {target} {'ok' if ratio <= target else 'MISSED'}",
              flush=True)


if __name__ == "__main__":
    main()
