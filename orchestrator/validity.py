"""Is a finished cell's measurement trustworthy? A verdict from its summary and the experiment's bounds.

A cell is invalid when requests failed (the survivors' latencies describe another load), when the
load generator measured itself (client stalls, late sends), when a CPU server was measured cold
(the first replay on a fresh CPU server builds kernels per batch shape), or when the replay ended
before the workload did. The verdict is recomputed from the recorded metrics whenever a run is
read back, so tightening a bound re-judges (and on resume re-runs) earlier cells.
"""

from __future__ import annotations

from typing import Any, Mapping

from workloads.metrics import CLIENT_STALL_SHARE

NAN = float("nan")


def _get(summary: Mapping[str, Any], key: str) -> float:
    try:
        return float(summary.get(key, NAN))
    except (TypeError, ValueError):
        return NAN


def invalid_reasons(summary: Mapping[str, Any], bounds: Any) -> list[str]:
    """Why the cell is invalid under ``bounds`` (``cfg.validity``); [] = valid."""
    out = []
    n, failed = _get(summary, "num_requests"), _get(summary, "num_failed")
    if failed > bounds.max_failed_fraction * n:
        out.append(f"{failed:.0f} of {n:.0f} requests failed (validity.max_failed_fraction="
                   f"{bounds.max_failed_fraction:g})")  # fmt: skip
    expected = _get(summary, "num_trace_requests")
    if expected == expected and n < expected:
        out.append(f"replay ended early: {n:.0f} of {expected:.0f} requests replayed")
    out += disturbance_reasons(summary, bounds)
    if _get(summary, "warmup_required") == 1 and not _get(summary, "warmup_replay_requests") > 0:
        out.append("server not warm: CPU server measured without a warm-up replay (backend.warmup_replay=false)")
    warm_failed = _get(summary, "warmup_replay_failed")
    if warm_failed > 0:
        out.append(f"server not warm: {warm_failed:.0f} warm-up replay requests failed")
    return out


def disturbance_reasons(summary: Mapping[str, Any], bounds: Any) -> list[str]:
    """The reasons that say the measuring machine, not the server, set the timings (client stalls, late
    sends): they come and go with the machine's load, so such a cell is worth running again."""
    out = []
    stalled, completed = _get(summary, "num_client_stalled"), _get(summary, "num_completed")
    if completed > 0 and stalled > bounds.max_client_stalled_fraction * completed:
        share = _get(summary, "client_stall_share_max")
        out.append(f"client stalls: {stalled:.0f} of {completed:.0f} requests have a TTFT or e2e that a pause of the "
                   f"load generator may have lengthened by > {CLIENT_STALL_SHARE:.0%} (up to {share:.0%}; "
                   f"validity.max_client_stalled_fraction={bounds.max_client_stalled_fraction:g})")
    lag = _get(summary, "send_lag_ms_p99")
    if lag > bounds.max_send_lag_ms_p99:
        out.append(f"send lag p99 {lag:.0f} ms > validity.max_send_lag_ms_p99={bounds.max_send_lag_ms_p99:g}")
    return out


def only_disturbed(summary: Mapping[str, Any], bounds: Any) -> bool:
    """Invalid, and only for the machine's reasons: worth running again (``validity.retries``)."""
    reasons = invalid_reasons(summary, bounds)
    return bool(reasons) and reasons == disturbance_reasons(summary, bounds)


def verdict(summary: Mapping[str, Any], bounds: Any) -> dict[str, Any]:
    """``{"valid": bool, "reasons": [...]}`` as written into summary.json."""
    reasons = invalid_reasons(summary, bounds)
    return {"valid": not reasons, "reasons": reasons}
