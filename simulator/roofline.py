"""The roofline step-time model: max(compute time, memory time) + a fixed per-step overhead, from the
model's ``config.json`` and a hardware spec (peak FLOP/s, memory bandwidth) — Williams et al.
(CACM 2009), as used for LLM inference by LLM-Viewer (Yuan et al., 2024)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
