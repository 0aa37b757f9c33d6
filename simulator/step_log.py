"""The step log of ``simulator.step_timer`` (one JSON line per engine step and per request the
engine added) read back: steps, their cycles (end of one step to the end of the next, what the
simulator's clock advances by) and when the engine was ready for a request."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.step_model import BatchShape


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
    transit measured on the idle ones that came alone (median: ZMQ, decoding, block hashes; its
    size is in docs/simulator.md, "Front-end latency")."""
    import bisect

    ends = [s["t3"] for s in steps]
    idle = []
    for a in adds:
        i = bisect.bisect_right(ends, a["t"]) - 1
        idle.append(i < 0 or a["t"] - ends[i] > idle_gap_s)
    # Transit from requests that came alone: the head of a burst waits while the API server
    # takes in the rest of the burst (several times the transit alone; docs/simulator.md).
    ts = [a["t"] for a in adds]
    alone = [(j == 0 or ts[j] - ts[j - 1] > 5e-3) and (j + 1 == len(ts) or ts[j + 1] - ts[j] > 5e-3) for j in range(len(ts))]
    fronts = [a["front"] for a, quiet, lone in zip(adds, idle, alone) if quiet and lone and "front" in a]
    transit = statistics.median(fronts) if fronts else 0.0
    return [a["t"] if quiet or "front" not in a else a["t"] - a["front"] + min(transit, a["front"])
            for a, quiet in zip(adds, idle)]  # fmt: skip
