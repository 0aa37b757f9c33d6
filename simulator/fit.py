"""Fit a ``LinearModel`` profile to a calibration campaign: the step cycles of the step log, the
front-end latencies of the client's records, and the step noise (``simulator.noise``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from simulator.linear import LinearModel, _nonneg_lstsq
from simulator.step_log import engine_ready_times, read_step_log, step_cycles
from simulator.step_model import cycle_time
from simulator.step_timer import prompt_key

if TYPE_CHECKING:
    from simulator.calibrate import RealRun


def measured_request_latencies(runs: Sequence[RealRun], adds: list[dict], steps: list[dict]) -> tuple[list[float], list[float]]:
    """Per request: (client send → ready for the engine) and (engine first-token step end → client
    first token).

    "Step end" is the next step's start (see ``step_cycles``), matching the simulator, which
    emits a step's tokens at the end of its cycle.
    """
    add_t = {a["key"]: t for a, t in zip(adds, engine_ready_times(adds, steps))}
    first_end: dict[int, float] = {}
    for a, b in zip(steps, steps[1:]):
        end = b["t0"] if a["busy"] else a["t3"]
        for key in a["first"]:
            first_end.setdefault(key, end)
    lat_in, lat_out = [], []
    for run in runs:
        by_id = {r.request_id: r for r in run.requests}
        for rec in run.records:
            if not rec.ok or rec.ttft_s is None:
                continue
            key = prompt_key(by_id[rec.request_id].prompt_token_ids)
            send = run.t0 + rec.actual_send_s
            if key in add_t:
                lat_in.append(add_t[key] - send)
            if key in first_end:
                lat_out.append(send + rec.ttft_s - first_end[key])
    if not lat_in or not lat_out:
        raise RuntimeError("could not match any client request to the engine's step log")
    return lat_in, lat_out


def fit_profile(runs: Sequence[RealRun], step_log: str | Path, *, name: str, meta: dict | None = None,
                windows: Sequence[tuple[float, float]] | None = None) -> LinearModel:  # fmt: skip
    """Fit the step model on the steps logged while ``runs`` (the measured sweep's phases) were
    replayed, ``windows[i]`` = (start, end) of ``runs[i]`` (default: the whole log, one run).

    Front-end latencies and step noise come from the phases with timed arrivals (the Poisson mix
    and the sustained phases: the load an experiment puts on a server): per phase, then the
    median of each quantile over phases. Single requests (cold code paths: slower out-latency) and
    simultaneous bursts (API-server queueing) are not what a replayed trace sees, and the median
    over phases keeps one phase that a machine stall hit from setting the tail (measurements:
    docs/simulator.md, "Front-end latency")."""
    config, adds, steps = read_step_log(step_log)
    if windows is None:
        windows = [(float("-inf"), float("inf"))] * len(runs)
    # One pass over the whole log per window: first-run token counts count from the server's start.
    cycles = [step_cycles(steps, adds, lo, hi) for lo, hi in windows]
    fitted = [c for cs in cycles for c in cs]
    profile = LinearModel.fit(
        [c.shape for c in fitted], [c.seconds for c in fitted], arrivals=[c.arrivals for c in fitted],
        new_shape=[c.new_shape for c in fitted], name=f"linear:{name}", meta={**(meta or {}), "engine": config},
        num_gpu_blocks=config.get("num_gpu_blocks"), block_size=config.get("block_size", 16),
    )  # fmt: skip
    loaded = [k for k, r in enumerate(runs) if r.requests and r.requests[-1].arrival_s > 0] or list(range(len(runs)))
    steps = [s for s in steps if s["t0"] >= min(lo for lo, _ in windows)]
    grid = np.linspace(0, 100, 21)
    per_run = [measured_request_latencies([runs[k]], adds, steps) for k in loaded]
    q_in = np.median([np.percentile(li, grid) for li, _ in per_run], axis=0)
    q_out = np.median([np.percentile(lo, grid) for _, lo in per_run], axis=0)
    ratios = [np.array([c.seconds / cycle_time(profile, c.shape, arrivals=c.arrivals, new_shape=c.new_shape)
                        for c in cycles[k]]) for k in loaded]  # fmt: skip
    noise = fit_step_noise([r for r in ratios if len(r)])
    return dataclasses.replace(
        profile, request_latency_in_s=float(q_in[10]), request_latency_out_s=float(q_out[10]),
        latency_in_quantiles=[float(x) for x in q_in], latency_out_quantiles=[float(x) for x in q_out], **noise,
    )  # fmt: skip


def fit_step_noise(ratio_runs: Sequence[np.ndarray], window: int = 41,
                   spans: Sequence[int] = (1, 2, 5, 10, 20, 50, 100)) -> dict[str, Any]:  # fmt: skip
    """``LinearModel`` noise fields (``StepNoise``) from per-phase series of measured/predicted
    step ratios, in time order.

    Drift: what matters to a queue is how slow a stretch of steps is, so the variance of the mean
    log ratio over ``spans`` consecutive steps is fitted as jitter/k + drift·g(phi, k) (g: the
    mean of phi^|i-j| over a k-step window), least squares in relative terms over a grid of phi
    (values fitted on the CPU box: docs/simulator.md, "Step noise"). Jitter: each ratio divided by
    the running median of its ``window`` neighbours (the local speed), quantiles at
    ``NOISE_PROBS``; scaled so that a step's expected multiplier is 1."""
    from simulator.noise import NOISE_PROBS

    runs = [np.asarray(r, dtype=float) for r in ratio_runs if len(r)]
    if not runs:
        return {}
    half = window // 2
    jitter, var_k, weight_k = [], np.zeros(len(spans)), np.zeros(len(spans))
    for r in runs:
        x = np.log(r)
        local = np.array([np.median(x[max(0, t - half): t + half + 1]) for t in range(len(x))])
        jitter.append(np.exp(x - local))
        x = x - x.mean()
        for i, k in enumerate(spans):
            if len(x) >= 4 * k:
                m = np.convolve(x, np.ones(k) / k, mode="valid")
                var_k[i] += float(m @ m) / len(m) * len(x)
                weight_k[i] += len(x)
    ok = weight_k > 0
    v, ks = var_k[ok] / weight_k[ok], np.asarray(spans, dtype=float)[ok]
    phi, drift_var = 0.0, 0.0
    if len(v) >= 3:
        best = float("inf")
        for cand in np.linspace(0.5, 0.999, 500):
            g = np.array([(k + 2 * sum((k - l) * cand**l for l in range(1, int(k)))) / k**2 for k in ks])
            a = np.column_stack([1 / ks, g]) / v[:, None]  # relative errors: every span counts
            coef = _nonneg_lstsq(a, np.ones(len(v)), [0, 1])
            err = float(((a @ coef - 1) ** 2).sum())
            if err < best:
                best, phi, drift_var = err, float(cand), float(coef[1])
    drift_sd = float(np.sqrt(drift_var))
    probs = np.asarray(NOISE_PROBS)
    q = np.quantile(np.concatenate(jitter), probs)
    mean_j = float((np.diff(probs) * (q[:-1] + q[1:]) / 2).sum())  # of the piecewise-linear quantile function
    q = q / (mean_j * np.exp(drift_sd**2 / 2))  # E[exp(drift)] = exp(sd²/2)
    return {"noise_quantiles": [float(v) for v in q], "noise_probs": list(NOISE_PROBS), "noise_phi": phi,
            "noise_drift_sd": drift_sd}  # fmt: skip
