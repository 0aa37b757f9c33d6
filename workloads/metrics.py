"""Serving metrics from per-request records, with the stable names documented in docs/metrics.md.

The real load generator and the simulator both produce ``RequestRecord``s, so both report
exactly these names. Latencies are in milliseconds, throughputs per second of ``duration_s``.
Percentiles use numpy's linear interpolation (as ``vllm bench serve``). Missing values are NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workloads.records import RequestRecord

PERCENTILES = (50, 90, 99)
NAN = float("nan")


# Share of a request's latency a client stall may add before the request counts as stalled.
CLIENT_STALL_SHARE = 0.1


def _stats(prefix: str, values: Sequence[float], *, with_max: bool = False) -> dict[str, float]:
    """``<prefix>_mean``, ``_p50``, ``_p90``, ``_p99`` (and ``_max``) of ``values``; NaN when empty."""
    a = np.asarray(values, dtype=float)
    out = {f"{prefix}_mean": float(a.mean()) if a.size else NAN}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(a, p)) if a.size else NAN
    if with_max:
        out[f"{prefix}_max"] = float(a.max()) if a.size else NAN
    return out


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = all equal, 1/n = one gets everything."""
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return NAN
    sq = float((a * a).sum())
    return 1.0 if sq == 0 else float(a.sum() ** 2 / (a.size * sq))


# Andes QoE (Liu et al., "Andes: Defining and Enhancing Quality-of-Experience in LLM-Based Text
# Streaming Services", arXiv:2404.16283): the reader expects the first token after QOE_TTFT_S and
# then QOE_TDS tokens per second. 5 tokens/s at ~0.75 words per token is ~225 words/min, near an
# average silent reading speed (~240 words/min, Brysbaert, 2019); our choice, see docs/reproductions.md.
QOE_TTFT_S = 1.0
QOE_TDS = 5.0


def token_times(r: RequestRecord) -> np.ndarray:
    """Arrival time of each output token at the client, in seconds after ``actual_send_s``."""
    if r.ttft_s is None:
        return np.empty(0)
    return r.ttft_s + np.concatenate([[0.0], np.cumsum(r.itl_s)])


def qoe(times_s: Sequence[float], *, expected_ttft_s: float = QOE_TTFT_S, expected_tds: float = QOE_TDS) -> float:
    """Andes' QoE of one streamed response: area under the actual token-delivery curve, capped by
    the expected one (tokens that come early are read no sooner), over the area under the
    expected curve, both up to the moment the last token is both delivered and due.

    Expected: token k (1-based) due at ``expected_ttft_s + (k-1) / expected_tds``. Both curves are
    step functions of sorted times, so min(actual, expected)(t) counts the k with max(a_k, e_k) <= t
    and each area is a sum over tokens. 1 = never behind the reader; 0 = nothing until the end.
    """
    a = np.asarray(times_s, dtype=float)
    if a.size == 0:
        return 0.0
    e = expected_ttft_s + np.arange(a.size) / expected_tds
    t_end = max(a[-1], e[-1])
    expected_area = float(np.sum(t_end - e))
    if expected_area <= 0:  # one token, due at t_end: delivered in time or not at all
        return 1.0 if a[-1] <= e[-1] else 0.0
    return float(np.sum(t_end - np.maximum(a, e))) / expected_area


def meets_slo(r: RequestRecord, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """Completed, and within every SLO given (a one-token output has no TPOT and passes it)."""
    if not r.ok:
        return False
    if slo_ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1e3 > slo_ttft_ms):
        return False
    tpot = r.tpot_s
    return slo_tpot_ms is None or tpot is None or tpot * 1e3 <= slo_tpot_ms


def _duration(records: Sequence[RequestRecord]) -> float:
    if not records:
        return NAN
    start = min(r.actual_send_s for r in records)
    end = max(r.actual_send_s + (r.e2e_s or 0.0) for r in records)
    return end - start


def _core(recs: Sequence[RequestRecord], duration_s: float, slo_ttft_ms, slo_tpot_ms) -> dict[str, float]:
    ok = [r for r in recs if r.ok]
    per_s = (lambda x: x / duration_s) if duration_s and duration_s > 0 else (lambda x: NAN)
    out_tokens = sum(r.output_tokens for r in ok)
    good = sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in recs)
    m: dict[str, float] = {
        "num_requests": float(len(recs)),
        "num_completed": float(len(ok)),
        "num_failed": float(len(recs) - len(ok)),
        "request_throughput": per_s(len(ok)),
        "output_token_throughput": per_s(out_tokens),
        "goodput": per_s(good),
        "goodput_fraction": good / len(recs) if recs else NAN,
    }
    m.update(_stats("ttft_ms", [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]))
    m.update(_stats("tpot_ms", [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None]))
    m.update(_stats("e2e_ms", [r.e2e_s * 1e3 for r in ok]))
    # Normalized latency: E2E / output tokens, averaged over requests (vLLM, Kwon et al. SOSP'23 §6;
    # the per-token latency of Fu et al. NeurIPS'24).
    m["norm_latency_ms_mean"] = float(np.mean([r.e2e_s * 1e3 / r.output_tokens for r in ok if r.output_tokens])) if ok else NAN
    return m


def summarize(
    records: Sequence[RequestRecord],
    *,
    duration_s: float | None = None,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict[str, float]:
    """Flat ``name -> float`` summary of a run (warm-up records excluded); names in docs/metrics.md.

    ``duration_s`` defaults to first send -> last completion. ``goodput`` counts completed requests
    meeting every given SLO (all completed ones when no SLO is given) per second.
    """
    recs = [r for r in records if not r.warmup]
    if duration_s is None:
        duration_s = _duration(recs)
    ok = [r for r in recs if r.ok]
    m = {"duration_s": float(duration_s)}
    m.update(_core(recs, duration_s, slo_ttft_ms, slo_tpot_ms))
    per_s = (lambda x: x / duration_s) if duration_s and duration_s > 0 else (lambda x: NAN)
    in_tokens = sum(r.prompt_tokens for r in ok)
    out_tokens = sum(r.output_tokens for r in ok)
    m["num_timeouts"] = float(sum(1 for r in recs if r.error and r.error.startswith("timeout")))
    m["num_short_outputs"] = float(sum(1 for r in ok if r.output_tokens < r.requested_output_tokens))
    # A request counts as stalled when a client pause may have added more than CLIENT_STALL_SHARE to
    # its TTFT or e2e latency; a 25 ms pause inside a 1.5 s TTFT is below the run-to-run noise.
    m["num_client_stalled"] = float(sum(1 for r in ok if r.client_stall_share > CLIENT_STALL_SHARE))
    m["client_stall_share_max"] = max((r.client_stall_share for r in ok), default=0.0)
    m["input_token_throughput"] = per_s(in_tokens)
    m["total_token_throughput"] = per_s(in_tokens + out_tokens)
    m.update(_stats("itl_ms", [g * 1e3 for r in ok for g in r.itl_s]))
    m.update(_stats("send_lag_ms", [(r.actual_send_s - r.scheduled_send_s) * 1e3 for r in recs], with_max=True))
    with_deadline = [r for r in recs if r.deadline_s is not None]
    met = [
        r.ok and (r.actual_send_s + r.e2e_s - r.scheduled_send_s) <= r.deadline_s for r in with_deadline
    ]
    m["deadline_met_fraction"] = sum(met) / len(met) if met else NAN
    # A failed request delivered nothing in time: QoE 0.
    q = np.asarray([qoe(token_times(r)) if r.ok else 0.0 for r in recs])
    m["qoe_mean"] = float(q.mean()) if q.size else NAN
    m["qoe_p10"] = float(np.percentile(q, 10)) if q.size else NAN

    tenants = sorted({r.tenant for r in recs})
    per_tenant = {t: _core([r for r in recs if r.tenant == t], duration_s, slo_ttft_ms, slo_tpot_ms) for t in tenants}
    m["num_tenants"] = float(len(tenants))
    m["jain_fairness"] = jain_index(v["output_token_throughput"] for v in per_tenant.values())
    m["jain_fairness_e2e"] = jain_index(v["e2e_ms_mean"] for v in per_tenant.values())
    for t, tm in per_tenant.items():
        for k, v in tm.items():
            m[f"tenant.{t}.{k}"] = v
    return m


def records_frame(records: Sequence[RequestRecord]) -> pd.DataFrame:
    """One row per record (all fields, ``itl_s`` as a list column) plus ``ok``, ``tpot_s``, ``send_lag_s``."""
    cols = [f.name for f in fields(RequestRecord)]
    df = pd.DataFrame([asdict(r) for r in records], columns=cols)
    df["ok"] = [r.ok for r in records]
    df["tpot_s"] = pd.Series([r.tpot_s for r in records], dtype=float)
    df["send_lag_s"] = df["actual_send_s"] - df["scheduled_send_s"]
    return df


def save_parquet(records: Sequence[RequestRecord], path: str | Path) -> Path:
    """Write per-request records to a Parquet file (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records_frame(records).to_parquet(path, index=False)
    return path


def load_records(path: str | Path) -> list[RequestRecord]:
    """Read records written by ``save_parquet`` back into ``RequestRecord``s."""
    df = pd.read_parquet(path)
    names = [f.name for f in fields(RequestRecord) if f.name in df.columns]  # older files lack newer fields
    out = []
    for row in df[names].to_dict("records"):
        row["itl_s"] = [float(x) for x in row["itl_s"]]
        for k in ("ttft_s", "e2e_s", "deadline_s", "error"):
            v = row[k]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                row[k] = None
        for k in ("priority", "prompt_tokens", "output_tokens", "requested_output_tokens", "status"):
            row[k] = int(row[k])
        row["warmup"] = bool(row["warmup"])
        out.append(RequestRecord(**row))
    return out
