"""Build what the simulation loop drives: the Scheduler (with the policy plugin) and vLLM Requests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from policies.inprocess import make_request, make_scheduler
from workloads.trace import Request as TraceRequest


def build_scheduler(
    model_dir: str | Path,
    *,
    policy: str,
    policy_args: dict[str, Any] | None,
    allocator: str,
    allocator_args: dict[str, Any] | None,
    block_size: int,
    num_blocks: int,
    **config_kwargs: Any,
):
    """vLLM's Scheduler as the real server builds it from ``policies.vllm_args``: the
    ``PolicyScheduler`` plugin with the same ``additional_config``."""
    import policies

    additional_config = policies.schedlab_config(policy, policy_args, allocator, allocator_args)
    cls = policies.scheduler_class()
    return make_scheduler(
        model_dir, scheduler_cls=cls, block_size=block_size, num_blocks=num_blocks,
        additional_config=additional_config, **config_kwargs,
    )  # fmt: skip


def engine_request_factory(
    *, block_size: int, max_model_len: int, eos_token_id: int | None
) -> Callable[[TraceRequest, float], Any]:
    """Build a vLLM Request as the API server would from the load generator's HTTP request:
    ``max_tokens`` = trace output length, ``priority``, ``vllm_xargs`` → ``extra_args``, and the
    model's ``eos_token_id`` (``policies.inprocess.token_ids``)."""

    def build(tr: TraceRequest, arrival_s: float):
        if tr.prompt_len + tr.output_len > max_model_len:
            raise ValueError(
                f"request {tr.request_id}: prompt ({tr.prompt_len}) + output ({tr.output_len}) tokens "
                f"exceed max_model_len {max_model_len}"
            )
        return make_request(
            tr.request_id, tr.prompt_token_ids, max(tr.output_len, 1), block_size=block_size,
            arrival_time=arrival_s, priority=tr.priority, extra_args=tr.vllm_xargs(), eos_token_id=eos_token_id,
        )  # fmt: skip

    return build


def materialize_prompts(requests: list[TraceRequest], model_dir: str | Path, *, seed: int = 0) -> list[TraceRequest]:
    """Copies of ``requests`` with ``prompt_token_ids`` filled by ``workloads.prompts.materialize``
    — the function the real load generator uses — so prefix-cache hits in the sim come from real
    block hashes of the same prompts (equal ``prefix_hash_ids`` → equal token blocks)."""
    from workloads.prompts import materialize

    out = [dataclasses.replace(r) for r in requests]
    todo = [r for r in out if r.prompt_token_ids is None]
    if todo:
        materialize(todo, model_dir, seed=seed)
    return out
