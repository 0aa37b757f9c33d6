"""What a calibrated profile adds to the step model's mean: per-request front-end latencies and the
steps' noise (``StepNoise``: a slow drift of the machine's speed times per-step jitter)."""

from __future__ import annotations

import math
from typing import Sequence

from simulator.step_model import StepTimeModel


def request_latencies(model: StepTimeModel, n: int, seed: int):
    """Per-request (in, out) front-end latencies: drawn (seeded) from the model's empirical
    quantiles when it has them, else its constants."""
    import numpy as np

    out = []
    rng = np.random.default_rng([seed, 7])
    for const, q in ((model.request_latency_in_s, getattr(model, "latency_in_quantiles", None)),
                     (model.request_latency_out_s, getattr(model, "latency_out_quantiles", None))):  # fmt: skip
        if q:
            out.append(np.interp(rng.random(n), np.linspace(0, 1, len(q)), q))
        else:
            out.append(np.full(n, float(const)))
    return out[0], out[1]


# Probabilities at which a profile stores its step-jitter quantiles: every percent, then finer in
# the tail, where rare stalls of many times the usual step live (evenly spaced points up to the
# maximum would give the single slowest step measured half a percent of all steps; docs/simulator.md).
NOISE_PROBS = tuple([k / 100 for k in range(100)] + [0.99 + k / 1000 for k in range(1, 10)] + [0.9995, 0.9999, 1.0])


class StepNoise:
    """Per-step multipliers for a calibrated profile: ``exp(drift) · jitter``. The drift is a
    stationary Gaussian AR(1) in log space (sd ``noise_drift_sd``, coefficient ``noise_phi`` per
    step: the machine's speed wandering over tens of steps); the jitter is independent per step,
    drawn from the measured quantiles (``noise_quantiles`` at ``noise_probs``), so its rare
    stalls stay isolated as the real ones are. Mean 1: the expected step time stays the fitted
    one; what changes is the spread a queue sees (measured on the CPU box: docs/simulator.md,
    "Step noise"), which queueing turns into TTFT tail the mean alone cannot produce."""

    def __init__(self, quantiles: Sequence[float], probs: Sequence[float], phi: float, drift_sd: float, seed: int,
                 chunk: int = 4096) -> None:  # fmt: skip
        import numpy as np

        if len(quantiles) != len(probs):
            raise ValueError(f"step noise: {len(quantiles)} quantiles for {len(probs)} probabilities")
        self._q = np.asarray(quantiles, dtype=float)
        self._p = np.asarray(probs, dtype=float)
        self._phi = min(max(float(phi), 0.0), 0.9999)
        self._sd = max(float(drift_sd), 0.0)
        self._rng = np.random.default_rng([seed, 13])
        self._x = float(self._rng.standard_normal())  # the drift starts in its stationary law
        self._chunk = chunk
        self._buf: list[float] = []
        self._k = 0

    def _refill(self) -> None:
        import numpy as np

        rng, phi, n = self._rng, self._phi, self._chunk
        eta = rng.standard_normal(n)
        drift = np.empty(n)
        x, c = self._x, math.sqrt(1.0 - phi * phi)
        for t in range(n):
            x = phi * x + c * eta[t]
            drift[t] = x
        self._x = x
        jitter = np.interp(rng.random(n), self._p, self._q)
        self._buf = (np.exp(self._sd * drift) * jitter).tolist()
        self._k = 0

    def __call__(self) -> float:
        if self._k >= len(self._buf):
            self._refill()
        self._k += 1
        return self._buf[self._k - 1]


def step_noise(model: StepTimeModel, seed: int) -> StepNoise | None:
    """The profile's ``StepNoise`` (seeded), or None for a deterministic model."""
    q = getattr(model, "noise_quantiles", None)
    return StepNoise(q, model.noise_probs, model.noise_phi, model.noise_drift_sd, seed) if q else None
