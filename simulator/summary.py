"""Summary metrics of a simulation, with the real server's names.

Client-side metrics come from ``workloads.metrics.summarize`` (the load generator's own function);
the server-side ones (``server_*``) from what the real server's /metrics would show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workloads.records import RequestRecord

if TYPE_CHECKING:
    from simulator.engine import LoopResult


def summarize_sim(loop: "LoopResult", ts: pd.DataFrame) -> dict[str, float]:
    summary = dict(_client_summary(loop.records))
    summary.update(simulated_server_summary(loop, ts))
    return summary


def simulated_server_summary(loop: "LoopResult", ts: pd.DataFrame) -> dict[str, float]:
    """The names of ``workloads.server_metrics.server_summary`` (the real server's /metrics)."""
    ok = [r for r in loop.records if r.ok]
    q, h = loop.prefix_cache_queries, loop.prefix_cache_hits
    out = {
        "server_num_preemptions": float(loop.num_preemptions),
        "server_prefix_cache_hits": float(h),
        "server_prefix_cache_queries": float(q),
        "server_prefix_cache_hit_rate": h / q if q else float("nan"),
        "server_prompt_tokens": float(sum(r.prompt_tokens for r in ok)),
        "server_generation_tokens": float(sum(r.output_tokens for r in ok)),
        "server_num_requests_success": float(len(ok)),
        "server_num_steps": float(loop.num_steps),
    }
    if len(ts):
        # Time-weighted over steps (a step's state lasts until the next step ends), like sampling
        # the real server's gauges at a fixed interval.
        t = ts["t_s"].to_numpy()
        w = np.diff(t, append=t[-1])
        w = w if w.sum() > 0 else np.ones_like(t)
        for col, name in (("kv_cache_usage", "kv_cache_usage"), ("num_running", "num_running"),
                          ("num_waiting", "num_waiting")):  # fmt: skip
            x = ts[col].to_numpy(dtype=float)
            out[f"server_{name}_mean"] = float((x * w).sum() / w.sum())
            out[f"server_{name}_max"] = float(x.max())
    return out


def _client_summary(records: list[RequestRecord]) -> dict[str, float]:
    from workloads.metrics import summarize

    return summarize(records)
