"""schedlab policy plugins for vLLM 0.32's v1 engine.

Write a ``SchedulingPolicy`` or ``BlockAllocator`` subclass (see ``policies.base`` and
docs/writing-a-policy.md); name it by short name (``fcfs``, ``sjf``, ...) or by dotted path
(``mypkg.mymod.MyPolicy``).

Real server::

    args = policies.vllm_args("sjf", allocator="lowest_id")
    # -> ["--scheduler-cls", "policies.scheduler.PolicyScheduler",
    #     "--additional-config", '{"schedlab": {"policy": "sjf", ...}}']
    VLLMServer(model_dir, extra_args=args)

In-process (the real vLLM Scheduler, no model)::

    from policies.inprocess import make_scheduler
    sched = make_scheduler(model_dir, scheduler_cls=policies.scheduler_class(),
                           additional_config=policies.schedlab_config("sjf"))

Request metadata: ``priority`` (HTTP top-level field, lower = more urgent) and
``vllm_xargs = {"tenant": str, "deadline_s": float, "output_len_hint": int}`` (reaches
``SamplingParams.extra_args``; in-process: ``make_request(..., extra_args=...)``).
"""

from __future__ import annotations

import json
from typing import Any

from policies.base import BlockAllocator, SchedulingPolicy
from policies.registry import (
    BLOCK_ALLOCATORS,
    EVICTION_POLICIES,
    SCHEDULING_POLICIES,
    block_allocator_class,
    load_allocator,
    load_policy,
    scheduling_policy_class,
)

SCHEDULER_CLS = "policies.scheduler.PolicyScheduler"

__all__ = [
    "BLOCK_ALLOCATORS", "EVICTION_POLICIES", "SCHEDULING_POLICIES", "SCHEDULER_CLS", "BlockAllocator", "SchedulingPolicy",
    "load_allocator", "load_policy", "scheduler_class", "schedlab_config", "vllm_args",
]


def schedlab_config(
    policy: str = "fcfs",
    policy_args: dict[str, Any] | None = None,
    allocator: str = "default",
    allocator_args: dict[str, Any] | None = None,
    check_invariants: bool = False,
) -> dict[str, Any]:
    """vLLM ``additional_config`` selecting the policy and allocator (validated here, early)."""
    load_policy(policy, policy_args)  # unknown name / bad args -> ValueError now, not in the engine
    load_allocator(allocator, allocator_args)
    return {"schedlab": {
        "policy": policy, "policy_args": dict(policy_args or {}),
        "allocator": allocator, "allocator_args": dict(allocator_args or {}),
        "check_invariants": bool(check_invariants),
    }}


def vllm_args(
    policy: str = "fcfs",
    policy_args: dict[str, Any] | None = None,
    allocator: str = "default",
    allocator_args: dict[str, Any] | None = None,
    check_invariants: bool = False,
) -> list[str]:
    """Extra ``vllm serve`` arguments that run ``policy`` and ``allocator`` in the engine core.
    The ``policies`` package (and any dotted-path class) must be importable by the server."""
    config = schedlab_config(policy, policy_args, allocator, allocator_args, check_invariants)
    return ["--scheduler-cls", SCHEDULER_CLS, "--additional-config", json.dumps(config)]


def scheduler_class() -> type:
    """``PolicyScheduler`` (imports vLLM); pass it as ``make_scheduler(scheduler_cls=...)``."""
    from policies.scheduler import PolicyScheduler

    return PolicyScheduler
