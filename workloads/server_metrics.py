"""vLLM's Prometheus ``/metrics``: scrape, sample over time, and summarize as ``server_*`` metrics.

Names are those of vLLM 0.32 (``vllm/v1/metrics/loggers.py``). Counters are read before and after
a run (differences); gauges (running/waiting requests, KV-cache usage) are sampled over time.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp
import numpy as np
import pandas as pd

from workloads.loadgen import _run_async, run_load
from workloads.records import RequestRecord
from workloads.trace import Request

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"  # a fraction in [0, 1] despite the name
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"  # tokens
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"  # tokens
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
SAMPLE_COLUMNS = ["t_s", "num_running", "num_waiting", "kv_cache_usage"]


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> ``{sample name: value}``, summed over label sets (engines, finish reasons).

    Histogram buckets and quantiles are dropped (their ``_sum``/``_count`` stay).
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "le" in s.labels or "quantile" in s.labels or s.name.endswith("_created"):
                continue
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def parse_gauges(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Fast path for the sampler: sum the unlabelled-or-labelled samples of ``names`` only.

    Full parsing of vLLM's exposition costs milliseconds of CPU (docs/metrics.md), which would stall
    the load generator's event loop (send lag) if done every sampling tick.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(names):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def scrape(base_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """GET ``base_url/metrics`` and parse it."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
        return parse(resp.read().decode())


async def scrape_async(
    base_url: str, session: aiohttp.ClientSession, names: tuple[str, ...] | None = None
) -> dict[str, float]:
    """Async ``scrape``; with ``names``, only those samples (fast, for sampling during a run)."""
    async with session.get(base_url.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse(text) if names is None else parse_gauges(text, names)


async def sample_server(
    base_url: str, stop: asyncio.Event, *, interval_s: float = 0.5,
    session: aiohttp.ClientSession | None = None, t0: float | None = None,
) -> pd.DataFrame:
    """Sample running/waiting/KV-usage gauges every ``interval_s`` until ``stop`` is set.

    ``t_s`` is seconds since ``t0`` (a ``time.perf_counter()`` value; default: now). A failed
    scrape is skipped, not fatal: the sampler must never break the load run.
    """
    own = session is None
    session = session or aiohttp.ClientSession()
    t0 = time.perf_counter() if t0 is None else t0
    rows = []
    try:
        while True:
            try:
                m = await scrape_async(base_url, session, (RUNNING, WAITING, KV_USAGE))
                rows.append((time.perf_counter() - t0, m.get(RUNNING, math.nan), m.get(WAITING, math.nan),
                             m.get(KV_USAGE, math.nan)))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                break
            except asyncio.TimeoutError:
                continue
    finally:
        if own:
            await session.close()
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    if name not in after:
        return math.nan
    return after[name] - before.get(name, 0.0)


def server_summary(
    before: dict[str, float], after: dict[str, float], samples: pd.DataFrame | None = None
) -> dict[str, float]:
    """``server_*`` metrics of a run from scrapes before/after it and the sampled time series."""
    hits, queries = _delta(before, after, PREFIX_HITS), _delta(before, after, PREFIX_QUERIES)
    out = {
        "server_num_preemptions": _delta(before, after, PREEMPTIONS),
        "server_prefix_cache_hits": hits,
        "server_prefix_cache_queries": queries,
        "server_prefix_cache_hit_rate": hits / queries if queries and queries > 0 else math.nan,
        "server_prompt_tokens": _delta(before, after, PROMPT_TOKENS),
        "server_generation_tokens": _delta(before, after, GENERATION_TOKENS),
        "server_num_requests_success": _delta(before, after, REQUEST_SUCCESS),
    }
    for col, name in (("kv_cache_usage", "kv_cache_usage"), ("num_running", "num_running"),
                      ("num_waiting", "num_waiting")):
        vals = np.asarray([] if samples is None or samples.empty else samples[col].dropna(), dtype=float)
        out[f"server_{name}_mean"] = float(vals.mean()) if vals.size else math.nan
        out[f"server_{name}_max"] = float(vals.max()) if vals.size else math.nan
    return out


# --- a replay with the server's /metrics sampled around and during it ---


@dataclass
class LoadResult:
    """A replay together with the server's ``/metrics`` before/after and sampled over time."""

    records: list[RequestRecord]
    server_before: dict[str, float]
    server_after: dict[str, float]
    samples: Any  # pandas.DataFrame: t_s, num_running, num_waiting, kv_cache_usage


async def run_load_with_server_metrics(
    base_url: str, model: str, requests: Sequence[Request], *, sample_interval_s: float = 0.5, **kw: Any
) -> LoadResult:
    """``run_load`` while sampling the server's ``/metrics`` every ``sample_interval_s``."""
    async with aiohttp.ClientSession() as metrics_session:
        state: dict[str, Any] = {}
        stop = asyncio.Event()

        async def measure_start() -> None:
            state["before"] = await scrape_async(base_url, metrics_session)
            state["sampler"] = asyncio.create_task(
                sample_server(base_url, stop, interval_s=sample_interval_s, session=metrics_session)
            )

        try:
            records = await run_load(base_url, model, requests, on_measure_start=measure_start, **kw)
        finally:
            stop.set()
        if "sampler" not in state:
            raise RuntimeError("the run failed before /metrics sampling started")
        samples = await state["sampler"]
        try:  # a server that died at the end of the replay: its records still count
            after = await scrape_async(base_url, metrics_session)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            after = {}
    return LoadResult(records, state["before"], after, samples)


def replay_with_server_metrics(
    base_url: str, model: str, requests: Sequence[Request], *, sample_interval_s: float = 0.5, **kw: Any
) -> LoadResult:
    """Synchronous ``run_load_with_server_metrics`` (same keyword options as ``replay``)."""
    return _run_async(
        run_load_with_server_metrics(base_url, model, requests, sample_interval_s=sample_interval_s, **kw)
    )
