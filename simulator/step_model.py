"""Step-time models: how long one engine step takes, given what the Scheduler scheduled.

The simulator replaces only the model's forward pass; everything else is vLLM's real Scheduler.
A step-time model maps a ``BatchShape`` (prefill tokens, decode tokens, requests, Σ context) to
seconds of virtual time. Two models:

- ``RooflineModel``: max(compute time, memory time) + a fixed per-step overhead, from the model's
  ``config.json`` and a hardware spec (peak FLOP/s, memory bandwidth) — the roofline model of
  Williams et al. (CACM 2009), as used for LLM inference by LLM-Viewer (Yuan et al., 2024).
- ``LinearModel``: ``t = c0 + c1·prefill_tokens + c2·decode_tokens + c3·Σcontext (+ c4·[step has
  a prefill chunk])``, fitted by least squares to per-step timings of a real server
  (``python -m simulator.calibrate``). The optional ``c4`` is a fixed extra cost of steps that run
  any prefill (another attention path, prompt-side bookkeeping): on vLLM's CPU backend a 48-token
  prefill step takes ~6 ms against ~2 ms for a one-request decode step, which ``c0..c3`` alone
  cannot express.

Two optional terms depend on the engine's state rather than on the batch, so the simulation loop
applies them (``cycle_time`` below): ``arrival_s`` per request reaching the engine while the step
runs (the API server and the engine's input thread take CPU from the forward pass on a machine
whose cores they share) and ``new_shape_s_per_token`` per scheduled token of a step whose token
count the engine has never run before (vLLM's CPU backend builds kernels per shape: measured 2×
the per-token cost of a shape seen before). Both are 0 for the roofline presets.

Both also carry the fixed client-side latencies a real server adds outside engine steps
(HTTP, tokenization, detokenization, streaming): ``request_latency_in_s`` from the client's send to
the engine seeing the request, ``request_latency_out_s`` from a step's end to the client seeing its
token. They are measured during calibration and are 0 for the roofline presets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import yaml

# Calibrated step-model profiles (data written by ``simulator.calibrate``, loaded by name).
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


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


# --------------------------------------------------------------------------------------------
# Roofline


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # dense FLOP/s in the serving dtype
    mem_bandwidth: float  # bytes/s
    mem_bytes: float  # accelerator memory for weights + KV cache
    step_overhead_s: float  # scheduler + launch + sampling per step, independent of batch
    flops_efficiency: float = 0.6  # achievable fraction of peak (matmul MFU)
    bandwidth_efficiency: float = 0.8  # achievable fraction of peak bandwidth
    dtype_bytes: int = 2
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2 * 2**30  # vLLM's profiled activation peak, roughly


HARDWARE: dict[str, Hardware] = {
    # NVIDIA datasheets: dense BF16 tensor-core peak, HBM bandwidth, memory.
    "h100": Hardware("h100", 989e12, 3.35e12, 80e9, 3e-3),
    "h200": Hardware("h200", 989e12, 4.8e12, 141e9, 3e-3),
    "a100": Hardware("a100", 312e12, 2.039e12, 80e9, 4e-3),
    # A small x86 server CPU running vLLM's CPU backend (fp32/bf16 via oneDNN); order-of-magnitude.
    "cpu": Hardware("cpu", 2e11, 2e10, 16e9, 4e-3, flops_efficiency=0.3, bandwidth_efficiency=0.5,
                    dtype_bytes=4, gpu_memory_utilization=1.0, activation_reserve_bytes=0.0),
}  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs from a HuggingFace ``config.json``."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ModelShape":
        heads = cfg["num_attention_heads"]
        return cls(
            hidden=cfg["hidden_size"],
            intermediate=cfg["intermediate_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab=cfg["vocab_size"],
        )

    @property
    def layer_params(self) -> int:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return q_o + k_v + 3 * self.hidden * self.intermediate

    @property
    def num_params(self) -> int:
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden  # + embedding + lm_head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


class RooflineModel:
    """t = overhead + max(FLOPs / (peak·eff), bytes / (bandwidth·eff)) for one step."""

    def __init__(self, hardware: Hardware, model: ModelShape | None = None, *, name: str | None = None,
                 request_latency_in_s: float = 0.0, request_latency_out_s: float = 0.0) -> None:  # fmt: skip
        self.hardware = hardware
        self.model = model
        self.name = name or f"roofline:{hardware.name}"
        self.request_latency_in_s = request_latency_in_s
        self.request_latency_out_s = request_latency_out_s
        if model is not None:
            self._bind()

    def bind_model(self, model_config: dict[str, Any]) -> "RooflineModel":
        """Attach the served model's shape (``simulate`` does this from ``model_dir``)."""
        if self.model is None:
            self.model = ModelShape.from_config(model_config)
            self._bind()
        return self

    def _bind(self) -> None:
        m, hw = self.model, self.hardware
        self._flops_per_token = 2.0 * m.layers * m.layer_params
        self._lm_head_flops = 2.0 * m.vocab * m.hidden  # per sampled token
        self._attn_flops = 4.0 * m.layers * m.heads * m.head_dim  # per (query token × key token)
        self._weight_bytes = float(m.num_params * hw.dtype_bytes)
        self._kv_bytes = float(m.kv_bytes_per_token(hw.dtype_bytes))
        self._inv_flops = 1.0 / (hw.peak_flops * hw.flops_efficiency)
        self._inv_bw = 1.0 / (hw.mem_bandwidth * hw.bandwidth_efficiency)

    def step_time(self, prefill_tokens: int, decode_tokens: int, num_reqs: int, sum_context: int, prefill_attn: int) -> float:
        tokens = prefill_tokens + decode_tokens
        decode_ctx = sum_context  # each decode token attends to its whole context
        flops = (
            self._flops_per_token * tokens
            + self._lm_head_flops * num_reqs
            + self._attn_flops * (prefill_attn + decode_ctx)
        )
        mem = self._weight_bytes + self._kv_bytes * (sum_context + tokens)
        return self.hardware.step_overhead_s + max(flops * self._inv_flops, mem * self._inv_bw)

    def num_gpu_blocks(self, block_size: int) -> int:
        """KV blocks that fit, as vLLM derives them: (memory × utilization − weights − activations)
        / bytes per block."""
        hw, m = self.hardware, self.model
        free = hw.mem_bytes * hw.gpu_memory_utilization - self._weight_bytes - hw.activation_reserve_bytes
        blocks = int(free // (self._kv_bytes * block_size))
        if blocks <= 0:
            raise ValueError(
                f"model with {m.num_params / 1e9:.1f}B parameters does not fit in {hw.name} memory "
                f"({hw.mem_bytes / 1e9:.0f} GB × {hw.gpu_memory_utilization})"
            )
        return blocks

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "roofline", "hardware": asdict(self.hardware),
                "request_latency_in_s": self.request_latency_in_s,
                "request_latency_out_s": self.request_latency_out_s}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Linear (calibrated)

FEATURES = ("prefill_tokens", "decode_tokens", "sum_context")


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
        time (a 2-decode step of 48 ms, a 400-token prefill of 220 ms against ~10 ms warm), the OS
        descheduling the engine — and a few of them dominate a plain least-squares fit (r² 0.18 on
        a sweep whose typical steps a 5-term line fits with r² 0.8). The threshold is loose on
        purpose: the ordinary contention tail (steps 2× the median while the API server streams)
        stays in, so the model's mean step time stays the server's.

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


# --------------------------------------------------------------------------------------------


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
# the tail, where one-in-a-thousand stalls of 5-30x live (evenly spaced points up to the maximum
# would give the single slowest step measured half a percent of all steps).
NOISE_PROBS = tuple([k / 100 for k in range(100)] + [0.99 + k / 1000 for k in range(1, 10)] + [0.9995, 0.9999, 1.0])


class StepNoise:
    """Per-step multipliers for a calibrated profile: ``exp(drift) · jitter``. The drift is a
    stationary Gaussian AR(1) in log space (sd ``noise_drift_sd``, coefficient ``noise_phi`` per
    step: the machine's speed wandering over tens of steps); the jitter is independent per step,
    drawn from the measured quantiles (``noise_quantiles`` at ``noise_probs``), so its rare
    stalls stay isolated as the real ones are. Mean 1: the expected step time stays the fitted
    one; what changes is the spread a queue sees (on the 2-core CPU box the median step runs at
    ~0.85-0.9x the fitted mean and one in a hundred at ~2x), which queueing turns into TTFT tail
    the mean alone cannot produce."""

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


def load_step_model(spec: "str | dict[str, Any] | StepTimeModel") -> StepTimeModel:
    """``"roofline:h100"``, ``"linear:<profile>"`` (``simulator/profiles/<profile>.yaml`` or a path),
    or a dict: ``{"kind": "roofline", "hardware": "h100" | {...}, "step_overhead_s": ...}`` /
    ``{"kind": "linear", "c0": ..., ...}``."""
    if isinstance(spec, (RooflineModel, LinearModel)):
        return spec
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if kind == "roofline":
            return load_step_model({"kind": "roofline", "hardware": arg or "h100"})
        if kind == "linear":
            if not arg:
                raise ValueError("step model 'linear' needs a profile: 'linear:<name under simulator/profiles>'")
            path = Path(arg)
            if not path.suffix:
                path = PROFILE_DIR / f"{arg}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
                raise FileNotFoundError(f"step-model profile {arg!r} not found at {path}; known profiles: {known}")
            data = yaml.safe_load(path.read_text())
            data.setdefault("name", f"linear:{path.stem}")
            return load_step_model(data)
        raise ValueError(f"unknown step model {spec!r}; use 'roofline:<{'|'.join(HARDWARE)}>' or 'linear:<profile>'")
    if not isinstance(spec, dict):
        raise TypeError(f"step model spec must be a str or dict, got {type(spec).__name__}")
    data = dict(spec)
    kind = data.pop("kind", None)
    if kind == "roofline":
        hw = data.pop("hardware", "h100")
        if isinstance(hw, str):
            if hw not in HARDWARE:
                raise ValueError(f"unknown hardware preset {hw!r}; known: {sorted(HARDWARE)}")
            hw = HARDWARE[hw]
        else:
            hw = Hardware(**hw)
        hw_fields = {k: data.pop(k) for k in list(data) if k in Hardware.__dataclass_fields__}
        if hw_fields:
            hw = Hardware(**{**asdict(hw), **hw_fields})
        return RooflineModel(hw, **data)
    if kind == "linear":
        missing = [c for c in ("c0", "c1", "c2", "c3") if c not in data]  # c4..c6 are optional
        if missing:
            raise ValueError(f"linear step model is missing coefficients {missing}")
        return LinearModel(**data)
    raise ValueError(f"step model dict needs kind 'roofline' or 'linear', got {kind!r}")
