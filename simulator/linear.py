"""The linear step-time model, fitted by least squares to per-step timings of a real server
(``python -m simulator.calibrate``); see ``simulator.step_model`` for its terms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulator.noise import NOISE_PROBS
from simulator.step_model import BatchShape


@dataclass
class LinearModel:
    """t = c0 + c1·prefill_tokens + c2·decode_tokens + c3·Σcontext + c4·[prefill_tokens > 0]
    (+ c5·requests arriving during the step + c6·tokens of a step of a never-run token count)."""

    c0: float
    c1: float
    c2: float
    c3: float
    c4: float = 0.0
    c5: float = 0.0
    c6: float = 0.0
    name: str = "linear"
    request_latency_in_s: float = 0.0
    request_latency_out_s: float = 0.0
    # Empirical front-end latency distributions (evenly spaced quantiles, seconds) measured during
    # calibration; when present, each simulated request draws its own latencies from them.
    latency_in_quantiles: list[float] = field(default_factory=list)
    latency_out_quantiles: list[float] = field(default_factory=list)
    # Step-time noise measured during calibration (measured / predicted cycle under sustained
    # load; ``StepNoise``): quantiles of the per-step jitter at ``noise_probs``, and the slow
    # drift of the machine's speed. Empty = every step takes exactly the predicted time.
    noise_quantiles: list[float] = field(default_factory=list)
    noise_probs: list[float] = field(default_factory=lambda: list(NOISE_PROBS))
    noise_phi: float = 0.0  # per-step AR(1) coefficient of the log drift
    noise_drift_sd: float = 0.0  # standard deviation of the log drift
    num_gpu_blocks: int | None = None  # KV blocks of the calibrated server, if known
    block_size: int = 16
    meta: dict[str, Any] = field(default_factory=dict)  # where/how it was measured, fit quality

    @property
    def arrival_s(self) -> float:
        return self.c5

    @property
    def new_shape_s_per_token(self) -> float:
        return self.c6

    def step_time(self, prefill_tokens: int, decode_tokens: int, num_reqs: int, sum_context: int, prefill_attn: int) -> float:
        t = self.c0 + self.c1 * prefill_tokens + self.c2 * decode_tokens + self.c3 * sum_context
        return t + self.c4 if prefill_tokens else t

    @classmethod
    def fit(cls, shapes: list[BatchShape], times_s: list[float], *, arrivals: list[int] | None = None,
            new_shape: list[bool] | None = None, prefill_step_term: bool = True, trim_sigmas: float = 10.0,
            **kwargs: Any) -> "LinearModel":
        """Least squares with non-negative coefficients (a negative cost per token is a fitting
        artefact of noisy timings; such coefficients are dropped and the rest refitted), robust to
        one-off stalls: steps more than ``trim_sigmas`` robust standard deviations (1.4826·MAD of
        the residuals) from the fit are left out and the fit repeated. Those are not a function of
        the batch shape — the CPU backend building kernels for a batch shape it sees for the first
        time, the OS descheduling the engine — and a few of them dominate a plain least-squares fit
        (docs/simulator.md, "Step-time models"). The threshold is loose on purpose: the ordinary
        contention tail (slow steps while the API server streams) stays in, so the model's mean
        step time stays the server's.

        ``arrivals`` (requests that reached the engine during each step) and ``new_shape`` (the
        step's token count ran for the first time) fit ``c5`` and ``c6``; without them both stay 0."""
        import numpy as np

        if len(shapes) < 4:
            raise ValueError(f"need at least 4 measured steps to fit a linear step model, got {len(shapes)}")
        n = len(shapes)
        arr = np.zeros(n) if arrivals is None else np.asarray(arrivals, dtype=float)
        new = np.zeros(n) if new_shape is None else np.asarray(new_shape, dtype=float)
        x = np.array([[1.0, s.prefill_tokens, s.decode_tokens, s.sum_context, float(s.prefill_tokens > 0), a,
                       f * (s.prefill_tokens + s.decode_tokens)] for s, a, f in zip(shapes, arr, new)])  # fmt: skip
        active = [0, 1, 2, 3] + [4] * prefill_step_term + [5] * (arrivals is not None) + [6] * (new_shape is not None)
        y = np.asarray(times_s, dtype=float)
        keep = np.ones(len(y), dtype=bool)
        for _ in range(10):
            full = _nonneg_lstsq(x[keep], y[keep], active)
            resid = y - x @ full
            mid = np.median(resid[keep])
            sigma = 1.4826 * float(np.median(np.abs(resid[keep] - mid)))
            new_keep = np.abs(resid - mid) <= trim_sigmas * max(sigma, 1e-6)
            if trim_sigmas <= 0 or (new_keep == keep).all() or new_keep.sum() < 4:
                break
            keep = new_keep
        pred = x @ full
        yk, pk = y[keep], pred[keep]
        rel_err = float(np.median(np.abs(pk - yk) / np.maximum(yk, 1e-9)))
        r2 = float(1 - ((yk - pk) ** 2).sum() / max(((yk - yk.mean()) ** 2).sum(), 1e-30))
        meta = {**kwargs.pop("meta", {}), "num_steps": len(shapes), "num_trimmed": int((~keep).sum()), "r2": r2,
                "median_rel_err": rel_err, "mean_pred_over_measured": float(pk.mean() / yk.mean())}  # fmt: skip
        return cls(*map(float, full), meta=meta, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "linear", **asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _nonneg_lstsq(x, y, active: list[int]):
    """Least squares over the ``active`` columns; a negative coefficient (other than the
    intercept) is dropped and the rest refitted."""
    import numpy as np

    active = list(active)
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        negative = [a for a, c in zip(active, coef) if c < 0 and a != 0]
        if not negative:
            break
        active.remove(negative[0])
    full = np.zeros(x.shape[1])
    full[active] = coef
    return full
