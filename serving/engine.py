"""The engine's settings, one place for ``vllm serve`` and the simulator.

``EngineLimits`` are what vLLM's Scheduler and KV cache are built with; the simulator builds its
in-process Scheduler from the same object that becomes the server's flags, so both sides of a
sim-vs-real comparison run under the same limits. ``EngineConfig`` (the ``conf/engine`` group) adds
the flags only a real server has.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, List, Mapping, Optional


@dataclass
class EngineLimits:
    """Scheduler and KV-cache limits (GPU-sized defaults, vLLM's words)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    num_gpu_blocks: Optional[int] = None  # KV blocks; None: what fits in memory (server) / the step model
    max_model_len: Optional[int] = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # prefill tokens per request per step (0: no cap, vLLM's default)

    def vllm_args(self) -> list[str]:
        """The ``vllm serve`` flags of these limits."""
        args = ["--max-num-seqs", str(self.max_num_seqs),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                "--block-size", str(self.block_size)]  # fmt: skip
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.num_gpu_blocks is not None:
            args += ["--num-gpu-blocks-override", str(self.num_gpu_blocks)]
        args.append("--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching")
        if not self.enable_chunked_prefill:
            args.append("--no-enable-chunked-prefill")
        if self.long_prefill_token_threshold:
            args += ["--long-prefill-token-threshold", str(self.long_prefill_token_threshold)]
        return args


@dataclass
class EngineConfig(EngineLimits):
    """``conf/engine/*.yaml``: the limits plus server-only flags."""

    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    dtype: Optional[str] = None
    extra_args: List[str] = field(default_factory=list)  # any other `vllm serve` flags

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> "EngineConfig":
        """From a (resolved) ``engine`` config node or plain dict."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: (list(v) if k == "extra_args" else v) for k, v in dict(node).items() if k in known})

    def limits(self) -> EngineLimits:
        return EngineLimits(**{f.name: getattr(self, f.name) for f in fields(EngineLimits)})

    def vllm_args(self) -> list[str]:
        args = super().vllm_args()
        if self.tensor_parallel_size > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.dtype is not None:
            args += ["--dtype", self.dtype]
        if self.enforce_eager:
            args.append("--enforce-eager")
        return args + [str(a) for a in self.extra_args]

