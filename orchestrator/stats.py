"""Uncertainty of the comparison: 95% intervals and significance of deltas (docs/metrics.md).

Across seeds (n >= 2 cells of one config) the interval is Student's t on the per-seed values:
each seed is one independent replication (its own arrivals, lengths and engine seed), the
per-request values of one replay are not independent (they share the queue). With a single seed
there is nothing to spread across, so the interval is a percentile bootstrap over that cell's
requests (an honest lower bound on the noise: it ignores the queue's correlation and the machine).

A delta vs the baseline is *significant* when its 95% interval excludes 0: a paired t-test on
per-seed differences when both sides share >= 2 seeds (same seed = same workload, so the pairing
removes the workload's own variation), Welch's t-test for >= 2 unpaired seeds each, a bootstrap
of the difference over requests when both sides have one cell, else not testable (``None``).
"""

from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
N_BOOT = 2000
_LATENCY = re.compile(r"^(ttft|tpot|e2e)_ms_(mean|p\d+)$")


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int  # seeds
    method: str  # "t over seeds" | "bootstrap over requests" | "none"


@dataclass
class Delta:
    pct: float  # (mean - baseline mean) / |baseline mean| * 100
    low_pct: float
    high_pct: float
    p_value: float
    significant: bool | None  # None: not testable (too few seeds/requests)
    method: str


@dataclass
class Sample:
    """One cell's value of a metric, its seed, and its requests (for the one-seed bootstrap)."""

    seed: str
    value: float
    records: pd.DataFrame | None = None
    duration_s: float | None = None


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` (needs >= 2)."""
    a = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)


def request_statistic(metric: str, records: pd.DataFrame, duration_s: float | None):
    """(per-request values, statistic over a resample along the last axis) that reproduce
    ``metric`` of ``workloads.metrics.summarize`` from a cell's requests; None when the metric is
    not a function of independent per-request values (server counters, fairness across tenants)."""
    recs = records[~records["warmup"]] if "warmup" in records else records
    ok = recs["ok"].to_numpy(bool)
    per_s = duration_s if duration_s and duration_s > 0 else None
    if m := _LATENCY.match(metric):
        col = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}[m.group(1)]
        vals = recs.loc[ok, col].dropna().to_numpy(float) * 1e3
        if m.group(2) == "mean":
            return vals, lambda x: x.mean(axis=-1)
        q = float(m.group(2)[1:])
        return vals, lambda x: np.percentile(x, q, axis=-1)
    if metric == "request_throughput" and per_s:
        return ok.astype(float), lambda x: x.sum(axis=-1) / per_s
    if metric == "output_token_throughput" and per_s:
        return recs["output_tokens"].to_numpy(float) * ok, lambda x: x.sum(axis=-1) / per_s
    if metric == "num_failed":
        return (~ok).astype(float), lambda x: x.sum(axis=-1)
    if metric == "deadline_met_fraction" and "deadline_s" in recs:
        d = recs[recs["deadline_s"].notna()]
        met = d["ok"].to_numpy(bool) & (
            (d["actual_send_s"] + d["e2e_s"].fillna(np.inf) - d["scheduled_send_s"]) <= d["deadline_s"]
        ).to_numpy(bool)
        return met.astype(float), lambda x: x.mean(axis=-1)
    return None


def _resample(values: np.ndarray, stat: Callable, rng: np.random.Generator, n: int = N_BOOT) -> np.ndarray:
    idx = rng.integers(0, values.size, size=(n, values.size))
    return stat(values[idx])


def _boot(sample: Sample, metric: str, rng: np.random.Generator) -> np.ndarray | None:
    if sample.records is None or not len(sample.records):
        return None
    got = request_statistic(metric, sample.records, sample.duration_s)
    if got is None or got[0].size < 2:
        return None
    return _resample(got[0], got[1], rng)


def _rng(metric: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(metric.encode()))  # same table for the same data


def interval(samples: Sequence[Sample], metric: str, level: float = LEVEL) -> Interval:
    """Mean over seeds with its 95% interval (t across seeds, or a bootstrap over one cell's requests)."""
    finite = [s for s in samples if s.value is not None and np.isfinite(s.value)]
    if not finite:
        return Interval(np.nan, np.nan, np.nan, len(samples), "none")
    vals = [s.value for s in finite]
    mean = float(np.mean(vals))
    if len(vals) >= 2:
        return Interval(mean, *t_interval(vals, level), len(vals), "t over seeds")
    boot = _boot(finite[0], metric, _rng(metric))
    if boot is None:
        return Interval(mean, np.nan, np.nan, 1, "none")
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return Interval(mean, float(lo), float(hi), 1, "bootstrap over requests")


def _finite(samples: Sequence[Sample]) -> dict[str, float]:
    return {s.seed: s.value for s in samples if s.value is not None and np.isfinite(s.value)}


def delta(base: Sequence[Sample], other: Sequence[Sample], metric: str, level: float = LEVEL) -> Delta:
    """Change of ``other`` vs ``base`` in % of the baseline mean, with its interval and test."""
    b, o = _finite(base), _finite(other)
    if not b or not o:
        return Delta(np.nan, np.nan, np.nan, np.nan, None, "none")
    ref = abs(float(np.mean(list(b.values()))))
    diff = float(np.mean(list(o.values())) - np.mean(list(b.values())))
    scale = 100.0 / ref if ref > 0 else np.nan
    pct = diff * scale
    common = sorted(set(b) & set(o))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: scipy warns, p = 0
        if len(common) >= 2:
            d = np.array([o[s] - b[s] for s in common])
            p = float(stats.ttest_rel([o[s] for s in common], [b[s] for s in common]).pvalue)
            lo, hi = t_interval(d, level) if d.std() > 0 else (d.mean(), d.mean())
            return Delta(float(d.mean()) * scale, lo * scale, hi * scale, p, p < 1 - level, "paired t by seed")
        if len(b) >= 2 and len(o) >= 2:
            res = stats.ttest_ind(list(o.values()), list(b.values()), equal_var=False)
            lo, hi = res.confidence_interval(level)
            p = float(res.pvalue)
            return Delta(pct, lo * scale, hi * scale, p, p < 1 - level, "Welch t")
    if len(b) == 1 and len(o) == 1:
        rng = _rng(metric)
        bb, ob = _boot(base[0], metric, rng), _boot(other[0], metric, rng)
        if bb is not None and ob is not None:
            d = ob - bb
            lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
            p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
            return Delta(pct, lo * scale, hi * scale, p, bool(lo > 0 or hi < 0), "bootstrap over requests")
    return Delta(pct, np.nan, np.nan, np.nan, None, "none")
