"""Build vLLM 0.32's real v1 Scheduler in this process, the way vLLM's own tests/v1/core do.

Used by the policy tests, the plugin-overhead benchmark and the simulator: the Scheduler,
KVCacheManager and BlockPool are vLLM's; only the model's forward pass is absent (callers feed
``ModelRunnerOutput`` into ``update_from_output``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # the official wheel cannot infer a device without a GPU

import torch  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

_none_hash_ready = False
_token_ids: dict[str, "TokenIds"] = {}


@dataclass(frozen=True)
class TokenIds:
    """The token ids a model-less engine needs, read from the model directory it is built from."""

    eos: int | None  # ends a request that does not ignore EOS (None: the model names none)
    ordinary: int  # no special token: what a fake forward pass samples before the last token


def token_ids(model_config: ModelConfig) -> TokenIds:
    """The EOS id the way vLLM reads it for generation (``generation_config.json``, else
    ``config.json``) and the lowest id that is no special token of the model or its tokenizer."""
    key = model_config.model
    if key not in _token_ids:
        gen = model_config.try_get_generation_config()
        hf = model_config.hf_text_config
        eos = gen.get("eos_token_id", getattr(hf, "eos_token_id", None))
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        special = set(eos_ids) | set(_tokenizer_special_ids(Path(key)))
        special |= {i for k in ("bos_token_id", "pad_token_id") for i in [gen.get(k), getattr(hf, k, None)] if isinstance(i, int)}
        ordinary = next(i for i in range(model_config.get_vocab_size()) if i not in special)
        _token_ids[key] = TokenIds(eos=eos_ids[0] if eos_ids else None, ordinary=ordinary)
    return _token_ids[key]


def _tokenizer_special_ids(model_dir: Path) -> list[int]:
    """Ids of the special tokens in ``tokenizer.json`` (none if the directory has no tokenizer)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return []
    return [t["id"] for t in json.loads(path.read_text()).get("added_tokens", []) if t.get("special")]


def make_vllm_config(
    model_dir: str | Path,
    *,
    block_size: int = 16,
    num_blocks: int = 1024,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int = 2048,
    max_model_len: int = 4096,
    enable_prefix_caching: bool = True,
    enable_chunked_prefill: bool = True,
    long_prefill_token_threshold: int = 0,
    scheduler_cls: type | str | None = None,
    additional_config: dict[str, Any] | None = None,
) -> VllmConfig:
    """A VllmConfig for an in-process Scheduler (async scheduling off: callers step synchronously)."""
    scheduler_kwargs: dict[str, Any] = dict(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=enable_chunked_prefill,
        long_prefill_token_threshold=long_prefill_token_threshold,
        async_scheduling=False,
        is_encoder_decoder=False,
    )
    if scheduler_cls is not None:
        scheduler_kwargs["scheduler_cls"] = scheduler_cls
    model_config = ModelConfig(
        model=str(model_dir),
        skip_tokenizer_init=True,
        dtype="float32",
        seed=0,
        max_model_len=max_model_len,
    )
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching)
    cache_config.num_gpu_blocks = num_blocks
    return VllmConfig(
        model_config=model_config,
        scheduler_config=SchedulerConfig(**scheduler_kwargs),
        cache_config=cache_config,
        additional_config=additional_config or {},
    )


def make_scheduler(
    model_dir: str | Path,
    *,
    scheduler_cls: type[Scheduler] = Scheduler,
    block_size: int = 16,
    num_blocks: int = 1024,
    **config_kwargs: Any,
) -> Scheduler:
    """A real vLLM Scheduler (or subclass) over ``num_blocks`` KV blocks of ``block_size`` tokens."""
    vllm_config = make_vllm_config(
        model_dir, block_size=block_size, num_blocks=num_blocks, scheduler_cls=scheduler_cls, **config_kwargs
    )
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=64, dtype=torch.float32))],
    )
    return scheduler_cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=block_size,
        log_stats=True,
    )


def make_request(
    request_id: str,
    prompt_token_ids: list[int],
    max_tokens: int,
    *,
    block_size: int = 16,
    arrival_time: float | None = None,
    priority: int = 0,
    extra_args: dict[str, Any] | None = None,
    ignore_eos: bool = True,
    eos_token_id: int | None = None,
) -> Request:
    """A vLLM Request as the engine would build it from an HTTP request.

    ``extra_args`` is ``SamplingParams.extra_args`` — where ``vllm_xargs`` of an HTTP request lands,
    and where policies read tenant / deadline / output-length hints. ``eos_token_id``: the model's
    (``token_ids(sched.vllm_config.model_config).eos``); None, as vLLM without a tokenizer, stops
    requests only by length.
    """
    global _none_hash_ready
    if not _none_hash_ready:
        init_none_hash(sha256)
        _none_hash_ready = True
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, extra_args=extra_args)
    params.update_from_generation_config({}, eos_token_id)
    return Request(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        priority=priority,
        block_hasher=get_request_block_hasher(block_size, sha256),
    )
