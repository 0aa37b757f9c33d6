"""Build vLLM 0.32's real v1 Scheduler in this process, the way vLLM's own tests/v1/core do.

Used by the policy tests, the plugin-overhead benchmark and the simulator: the Scheduler,
KVCacheManager and BlockPool are vLLM's; only the model's forward pass is absent (callers feed
``ModelRunnerOutput`` into ``update_from_output``).
"""

from __future__ import annotations

import os
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

EOS_TOKEN_ID = 2  # matches serving.models' tokenizer

_none_hash_ready = False


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
) -> Request:
    """A vLLM Request as the engine would build it from an HTTP request.

    ``extra_args`` is ``SamplingParams.extra_args`` — where ``vllm_xargs`` of an HTTP request lands,
    and where policies read tenant / deadline / output-length hints.
    """
    global _none_hash_ready
    if not _none_hash_ready:
        init_none_hash(sha256)
        _none_hash_ready = True
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, extra_args=extra_args)
    params.update_from_generation_config({}, EOS_TOKEN_ID)
    return Request(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        priority=priority,
        block_hasher=get_request_block_hasher(block_size, sha256),
    )
