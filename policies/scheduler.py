"""``PolicyScheduler``: vLLM's v1 Scheduler with a SchedulingPolicy and a BlockAllocator plugged in.

Loaded by ``vllm serve --scheduler-cls policies.scheduler.PolicyScheduler`` (in the engine-core
process) or in-process via ``policies.inprocess.make_scheduler``; which policy/allocator to use comes
from ``vllm_config.additional_config["schedlab"]`` (see ``policies.schedlab_config``).

vLLM's ``schedule()`` is not copied; small hooks around it (vLLM-version-specific parts in
``policies.vllm_glue``, section "scheduler"):
- waiting order: vLLM's waiting queues become queues ordered by the policy, re-keyed every
  ``policy.rekey_every`` steps when the policy's keys change over time;
- admission: ``_handle_blocked_waiting_request`` (vLLM's per-request "skip this step" hook) also
  asks ``policy.admit`` and ``allocator.admit``. For an allocator that ``admits_by_tenant``,
  ``self.waiting`` is a ``TenantQueue`` (one heap per tenant, same order): a refusal closes the
  request's tenant, whose other requests vLLM then no longer walks over this step (policies with
  their own ``make_queue`` keep it, and per-request admission);
- preemption victim: before each step ``self.running`` is stably sorted by ``policy.preemption_key``.
  vLLM's FCFS path preempts ``self.running.pop()`` — now the largest key — through
  ``_preempt_request`` (metrics, ``num_preemptions``), and since the largest key is last it is never
  a request already scheduled earlier in this step, so no budget fix-up is needed. Sorted order is
  also the order in which running requests get the step's token budget;
- proactive preemption: before each step the victims of ``policy.to_preempt()`` leave
  ``self.running`` through vLLM's ``_preempt_request`` (``policies.vllm_glue.preempt_running``, as
  vLLM's ``reset_prefix_cache`` does), and are refused admission for the rest of that step;
- prefill control: ``policy.prefill_limits()`` sets vLLM's per-step token knobs before each step
  (``vllm_glue.StepLimits``); the cap on concurrent prefills is enforced at admission, and once it
  is reached vLLM's walk over the waiting queue ends;
- clock: ``self.clock()`` is the engine's clock (``time.time``, the basis of ``arrival_time``); the
  simulator replaces it by its virtual clock;
- allocation: the live BlockPool's class is switched to ``PolicyBlockPool`` (see block_pool.py).

vLLM enables async scheduling by default, and the engine then expects an AsyncScheduler:
``PolicyScheduler(...)`` builds an ``AsyncPolicyScheduler`` (same hooks on top of AsyncScheduler)
whenever ``scheduler_config.async_scheduling`` is on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from policies import vllm_glue as glue
from policies.base import PolicyError, PrefillLimits, tenant
from policies.block_pool import install_allocator
from policies.invariants import check_block_pool, owned_blocks
from policies.queue import KeyedRequestQueue, TenantQueue
from policies.registry import load_allocator, load_policy

logger = init_logger("vllm.schedlab")

CONFIG_KEY = "schedlab"


@dataclass
class PluginConfig:
    """The plugins a server runs: ``additional_config["schedlab"]`` as ``policies.schedlab_config`` wrote it."""

    policy: str = "fcfs"
    policy_args: dict[str, Any] = field(default_factory=dict)
    allocator: str = "default"
    allocator_args: dict[str, Any] = field(default_factory=dict)
    check_invariants: bool = False

    @classmethod
    def from_additional_config(cls, additional_config: dict[str, Any] | None) -> PluginConfig:
        raw = dict((additional_config or {}).get(CONFIG_KEY) or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in additional_config[{CONFIG_KEY!r}]; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**raw)
        cfg.policy_args = dict(cfg.policy_args or {})
        cfg.allocator_args = dict(cfg.allocator_args or {})
        return cfg


class PolicyScheduler(Scheduler):
    def __new__(cls, *args: Any, **kwargs: Any):
        vllm_config = kwargs["vllm_config"] if "vllm_config" in kwargs else args[0]
        if cls is PolicyScheduler and vllm_config.scheduler_config.async_scheduling:
            cls = AsyncPolicyScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = PluginConfig.from_additional_config(self.vllm_config.additional_config)
        self.schedlab_config = cfg
        self.schedlab_policy = load_policy(cfg.policy, cfg.policy_args)
        self.schedlab_allocator = load_allocator(cfg.allocator, cfg.allocator_args)
        self.schedlab_policy.bind(self)
        self.schedlab_policy.scheduler = self  # now()/waited() need it, also if bind() skipped super().bind

        self.clock: Callable[[], float] = time.time  # the basis of Request.arrival_time
        policy = self.schedlab_policy
        if (queue := policy.make_queue()) is not None:
            first = [queue]  # (an empty queue is falsy: no `or` here)
            glue.replace_waiting_queues(self, lambda: first.pop() if first else policy.make_queue())
        elif policy.orders_waiting:
            glue.replace_waiting_queues(self, lambda: KeyedRequestQueue(policy.waiting_key))
        # else: keep vLLM's own FCFS deques
        if self.schedlab_allocator.admits_by_tenant and queue is None:  # a refused tenant sits out the step
            self.waiting = TenantQueue(tenant, policy.waiting_key if policy.orders_waiting else None)
        self._sort_running = policy.orders_victims
        self._rekey_every = _positive_int(policy, "rekey_every", allow_zero=True)
        if self._rekey_every and not all(hasattr(q, "rekey") for q in glue.waiting_queues(self)):
            raise ValueError(
                f"scheduling policy {policy.describe()!r}: rekey_every={self._rekey_every} needs waiting queues "
                f"with a rekey() method (KeyedRequestQueue has one; override waiting_key, or add rekey() to the "
                f"queue make_queue() returns)")
        self._preempts, self._limits_prefill = policy.preempts, policy.limits_prefill
        self._step_limits = glue.StepLimits(self)
        self._max_partial_prefills: int | None = None
        self._admission_base = 0  # running requests mid-prefill, minus len(running), at step start
        self._just_preempted: set[str] = set()

        install_allocator(self.kv_cache_manager.block_pool, self.schedlab_allocator, self)
        logger.info(
            "schedlab: policy=%s allocator=%s check_invariants=%s async_scheduling=%s (%s)",
            self.schedlab_policy.describe(), self.schedlab_allocator.describe(), cfg.check_invariants,
            isinstance(self, AsyncScheduler), type(self).__name__,
        )

    # -- hooks --

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        policy = self.schedlab_policy
        if self._rekey_every and self.current_step % self._rekey_every == 0:
            self._rekey(policy.stale_keys())
        if self._sort_running and len(self.running) > 1:
            self.running.sort(key=policy.preemption_key)
        if self._preempts:
            self._preempt_now(policy.to_preempt())
        if self._limits_prefill:
            self._apply_prefill_limits(policy.prefill_limits())
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            if isinstance(self.waiting, TenantQueue):
                self.waiting.end_step()
            self._step_limits.end_step()
            self._just_preempted.clear()
        policy.on_schedule(output)
        if self.schedlab_config.check_invariants:
            self.check_invariants("after schedule()")
        return output

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self.schedlab_config.check_invariants:
            self.check_invariants("after update_from_output()")
        return outputs

    def _rekey(self, stale) -> None:
        if stale is None:
            for queue in glue.waiting_queues(self):
                if len(queue) > 1:
                    queue.rekey()
        elif stale := list(stale):  # never skipped: the policy has handed these over once
            for queue in glue.waiting_queues(self):
                if queue:
                    queue.rekey(stale)

    def _preempt_now(self, victims) -> None:
        victims = list(victims or ())
        if not victims:
            return
        seen: set[str] = set()
        for r in victims:
            rid = getattr(r, "request_id", None)
            if rid is None or rid in seen or not glue.is_running(self, r):
                what = ("not a vLLM Request" if rid is None else "named twice" if rid in seen
                        else f"not a running request (status {r.status.name})")
                raise PolicyError(f"scheduling policy {self.schedlab_policy.describe()!r}: to_preempt() returned "
                                  f"{rid or r!r}, which is {what}; return requests from scheduler.running")
            seen.add(rid)
        glue.preempt_running(self, victims)
        self._just_preempted = seen

    def _apply_prefill_limits(self, limits: PrefillLimits | None) -> None:
        limits = limits or PrefillLimits()
        if not isinstance(limits, PrefillLimits):
            raise PolicyError(f"scheduling policy {self.schedlab_policy.describe()!r}: prefill_limits() returned "
                              f"{limits!r}, not a policies.base.PrefillLimits or None")
        self._step_limits.set(limits.step_tokens, limits.chunk_tokens)
        self._max_partial_prefills = cap = limits.max_partial_prefills
        if cap is not None:
            mid_prefill = sum(map(glue.is_mid_prefill, self.running))
            self._admission_base = mid_prefill - len(self.running)
            if mid_prefill >= cap:
                self._step_limits.stop_admitting()

    def _handle_blocked_waiting_request(self, request: Request) -> bool:
        if not super()._handle_blocked_waiting_request(request):
            return False
        if self._just_preempted and request.request_id in self._just_preempted:
            return False  # a proactive victim waits at least one step
        cap = self._max_partial_prefills
        if cap is not None and self._admission_base + len(self.running) >= cap:
            self._step_limits.stop_admitting()  # every waiting request would start a prefill
            return False
        if not self.schedlab_policy.admit(request):
            return False
        if not self.schedlab_allocator.admit(request):
            if isinstance(self.waiting, TenantQueue):
                self.waiting.close(tenant(request))
            return False
        return True

    def check_invariants(self, where: str = "") -> None:
        """Raise AllocatorInvariantError if the BlockPool is inconsistent (see policies.invariants)."""
        check_block_pool(
            self.kv_cache_manager.block_pool, owned_blocks(self), self.schedlab_allocator.describe(),
            f" (step {self.current_step}, {where})" if where else "",
        )


def _positive_int(policy, attr: str, allow_zero: bool = False) -> int:
    value = getattr(policy, attr)
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        raise ValueError(f"scheduling policy {policy.describe()!r}: {attr} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return value


class AsyncPolicyScheduler(PolicyScheduler, AsyncScheduler):
    """PolicyScheduler on top of vLLM's AsyncScheduler (MRO: PolicyScheduler hooks, then AsyncScheduler)."""
