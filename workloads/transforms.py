"""Trace transforms. Each returns a new ``Trace`` of copied rows; the input is left unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from workloads.synthetic import arrival_times
from workloads.trace import MOONCAKE_BLOCK_TOKENS, Request, Trace


def _trace(requests: list[Request], rows: list[Request]) -> Trace:
    return requests.derive(rows) if isinstance(requests, Trace) else Trace(rows)


def time_scale(requests: list[Request], speedup: float) -> Trace:
    """Replay ``speedup`` times faster (2.0 halves every arrival time)."""
    if not speedup > 0:
        raise ValueError(f"time_scale speedup must be > 0, got {speedup}")
    return _trace(requests, [replace(r, arrival_s=r.arrival_s / speedup) for r in requests])


def with_rate(
    requests: list[Request], rate: float, *, arrival: str | None = None, cv: float = 1.0, seed: int = 0
) -> Trace:
    """Set the mean request rate to ``rate`` req/s.

    ``arrival=None`` rescales the trace's own timestamps (keeps its burst pattern);
    ``"poisson"``/``"gamma"`` draws fresh seeded arrivals (for traces without timestamps).
    """
    n = len(requests)
    if arrival is None:
        span = max((r.arrival_s for r in requests), default=0.0) - min((r.arrival_s for r in requests), default=0.0)
        if n < 2 or span <= 0:
            raise ValueError("trace has no arrival-time spread to rescale; pass arrival='poisson' or 'gamma'")
        return time_scale(requests, rate / ((n - 1) / span))
    times = arrival_times(n, rate, arrival, cv, rng=np.random.default_rng(seed))
    return _trace(requests, [replace(r, arrival_s=float(t)) for r, t in zip(requests, times)])


def truncate(requests: list[Request], num_requests: int | None = None, duration_s: float | None = None) -> Trace:
    """Keep the first ``num_requests`` rows and/or the rows arriving within ``duration_s`` of the first."""
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    rows = sorted(requests, key=lambda r: r.arrival_s)
    if duration_s is not None and rows:
        t0 = rows[0].arrival_s
        rows = [r for r in rows if r.arrival_s - t0 < duration_s]
    if num_requests is not None:
        rows = rows[:num_requests]
    return _trace(requests, [replace(r) for r in rows])


def clip_lengths(
    requests: list[Request], max_model_len: int, *, max_prompt_len: int | None = None,
    max_output_len: int | None = None,
) -> Trace:
    """Clip prompt and output lengths so prompt + output <= ``max_model_len`` (prompt keeps >= 1 output slot)."""
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    rows = []
    for r in requests:
        p = min(r.prompt_len, max_model_len - 1, max_prompt_len or max_model_len)
        bound = min(max_model_len - p, max_output_len or max_model_len)
        o = max(1, min(r.output_len, bound))
        rows.append(
            replace(
                r,
                prompt_len=p,
                output_len=o,
                # The hint is clipped to the same bound, not to this request's own output: a noisy
                # predictor's hint must not learn the true length from the clipping.
                output_len_hint=None if r.output_len_hint is None else max(1, min(r.output_len_hint, bound)),
                prefix_hash_ids=r.prefix_hash_ids[: math.ceil(p / MOONCAKE_BLOCK_TOKENS)],
                prompt_token_ids=None if r.prompt_token_ids is None else r.prompt_token_ids[:p],
            )
        )
    return _trace(requests, rows)
