"""Step-time models: how long one engine step takes, given what the Scheduler scheduled.

This module holds what a step-time model is (``BatchShape``, the ``StepTimeModel`` protocol,
``cycle_time``); the models are ``simulator.roofline`` and ``simulator.linear``, the calibrated step
noise ``simulator.noise``, and ``simulator.load`` turns a spec (``"roofline:h100"``,
``"linear:cpu_tiny"``) into a model.

The simulator replaces only the model's forward pass; everything else is vLLM's real Scheduler.
A step-time model maps a ``BatchShape`` (prefill tokens, decode tokens, requests, Σ context) to
seconds of virtual time. Two models:

- ``RooflineModel``: max(compute time, memory time) + a fixed per-step overhead, from the model's
  ``config.json`` and a hardware spec (peak FLOP/s, memory bandwidth) — the roofline model of
  Williams et al. (CACM 2009), as used for LLM inference by LLM-Viewer (Yuan et al., 2024).
- ``LinearModel``: ``t = c0 + c1·prefill_tokens + c2·decode_tokens + c3·Σcontext (+ c4·[step has
  a prefill chunk])``, fitted by least squares to per-step timings of a real server
  (``python -m simulator.calibrate``). The optional ``c4`` is a fixed extra cost of steps that run
  any prefill (another attention path, prompt-side bookkeeping), which ``c0..c3`` alone cannot
  express (its size on vLLM's CPU backend: docs/simulator.md, "Step-time models").

Two optional terms depend on the engine's state rather than on the batch, so the simulation loop
applies them (``cycle_time`` below): ``arrival_s`` per request reaching the engine while the step
runs (the API server and the engine's input thread take CPU from the forward pass on a machine
whose cores they share) and ``new_shape_s_per_token`` per scheduled token of a step whose token
count the engine has never run before (vLLM's CPU backend builds kernels per shape; measured in
docs/simulator.md). Both are 0 for the roofline presets.

Both also carry the fixed client-side latencies a real server adds outside engine steps
(HTTP, tokenization, detokenization, streaming): ``request_latency_in_s`` from the client's send to
the engine seeing the request, ``request_latency_out_s`` from a step's end to the client seeing its
token. They are measured during calibration and are 0 for the roofline presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class BatchShape:
    """What one engine step computes. ``sum_context`` counts, per scheduled request, the tokens
    in its KV cache after the step (attention reads them all)."""

    prefill_tokens: int = 0
    decode_tokens: int = 0
    num_reqs: int = 0
    sum_context: int = 0
    # Σ scheduled·context over prefill chunks: attention work of prefill (quadratic in length).
    prefill_attn: int = 0

    @classmethod
    def of_step(cls, requests: Mapping[str, Any], num_scheduled_tokens: Mapping[str, int]) -> "BatchShape":
        """The shape of a step just returned by ``schedule()`` (``num_computed_tokens`` already advanced).
        The simulator and the calibration's step timer both use this, so a fitted model applies as measured."""
        prefill = decode = ctx_sum = prefill_attn = 0
        for rid, k in num_scheduled_tokens.items():
            ctx = requests[rid].num_computed_tokens
            ctx_sum += ctx
            if k == 1:
                decode += 1
            else:
                prefill += k
                prefill_attn += k * ctx
        return cls(prefill, decode, len(num_scheduled_tokens), ctx_sum, prefill_attn)


@runtime_checkable
class StepTimeModel(Protocol):
    name: str
    request_latency_in_s: float
    request_latency_out_s: float
    # Optional (read with getattr, default 0): per request reaching the engine during a step, and
    # per token of a step whose token count the engine runs for the first time. See ``cycle_time``.
    # arrival_s: float
    # new_shape_s_per_token: float

    def step_time(self, prefill_tokens: int, decode_tokens: int, num_reqs: int, sum_context: int, prefill_attn: int) -> float:
        """Seconds one engine step takes for this batch shape."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


def cycle_time(model: StepTimeModel, shape: BatchShape, *, arrivals: int = 0, new_shape: bool = False) -> float:
    """A step's duration with the engine-state terms: ``arrivals`` requests reached the engine while
    it ran, ``new_shape`` = its token count is run for the first time since the server started."""
    t = model.step_time(shape.prefill_tokens, shape.decode_tokens, shape.num_reqs, shape.sum_context, shape.prefill_attn)
    t += getattr(model, "arrival_s", 0.0) * arrivals
    if new_shape:
        t += getattr(model, "new_shape_s_per_token", 0.0) * (shape.prefill_tokens + shape.decode_tokens)
    return t
