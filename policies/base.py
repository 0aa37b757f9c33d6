"""The two plugin interfaces: ``SchedulingPolicy`` and ``BlockAllocator``.

Both see vLLM's own objects (``vllm.v1.request.Request``, ``BlockPool``, ``KVCacheBlock``); the
accessor functions below read the request metadata a policy may use, so policies never poke at
vLLM internals directly.

A subclass declares its parameters as keyword arguments of ``__init__``; ``policy_args`` /
``allocator_args`` from the config are passed there (an unknown parameter is a ``TypeError``
naming it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import KVCacheBlock
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.core.sched.request_queue import RequestQueue
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request


# ---- request metadata (HTTP: "priority" field, "vllm_xargs" -> SamplingParams.extra_args) ----

def extra_args(request: Request) -> dict[str, Any]:
    params = request.sampling_params
    return (params.extra_args if params is not None else None) or {}


def prompt_len(request: Request) -> int:
    return request.num_prompt_tokens


def tokens_served(request: Request) -> int:
    """Output tokens generated so far (kept across preemptions)."""
    return request.num_output_tokens


def tenant(request: Request) -> str:
    """``vllm_xargs.tenant``; requests without one share the tenant ``"default"``."""
    return str(extra_args(request).get("tenant", "default"))


def output_len_hint(request: Request) -> int | None:
    """Client-predicted output length (``vllm_xargs.output_len_hint``), or None."""
    hint = extra_args(request).get("output_len_hint")
    return None if hint is None else int(hint)


def deadline(request: Request) -> float:
    """Absolute deadline = ``arrival_time + vllm_xargs.deadline_s``; +inf without one."""
    rel = extra_args(request).get("deadline_s")
    return math.inf if rel is None else request.arrival_time + float(rel)


# ---- scheduling ----

class SchedulingPolicy:
    """Decides the waiting-queue order, per-step admission and the preemption victim.

    Override only what you need; every default is vLLM's FCFS behaviour:

    - ``waiting_key(request)``: sort key of a waiting request, smaller is admitted first (ties:
      earlier arrival). Evaluated when the request enters the waiting queue, so it must not change
      while the request waits (for keys that do, see ``make_queue``).
    - ``admit(request)``: False keeps the request waiting this step (others behind it may go).
    - ``preemption_key(request)``: when KV blocks run out, the running request with the LARGEST
      key is preempted first.
    - ``on_schedule(output)``: called after every ``schedule()`` with vLLM's ``SchedulerOutput``
      (e.g. to account tokens served per tenant).
    """

    name: ClassVar[str] = ""

    def bind(self, scheduler: Scheduler) -> None:
        """Called once with the live scheduler (``scheduler.running``, ``.requests``, ...)."""
        self.scheduler = scheduler

    def waiting_key(self, request: Request) -> Any:
        raise NotImplementedError  # not overridden -> vLLM's own FCFS queue is kept

    def preemption_key(self, request: Request) -> Any:
        raise NotImplementedError  # not overridden -> vLLM preempts the last admitted request

    def admit(self, request: Request) -> bool:
        return True

    def on_schedule(self, output: SchedulerOutput) -> None:
        pass

    def make_queue(self) -> RequestQueue | None:
        """A custom ``RequestQueue`` for orders that change while requests wait (see ``vtc``).
        None: a heap on ``waiting_key`` (or vLLM's FCFS deque if ``waiting_key`` is not overridden)."""
        return None

    @property
    def orders_waiting(self) -> bool:
        return type(self).waiting_key is not SchedulingPolicy.waiting_key

    @property
    def orders_victims(self) -> bool:
        return type(self).preemption_key is not SchedulingPolicy.preemption_key

    def describe(self) -> str:
        return self.name or type(self).__qualname__


# ---- KV block allocation ----

class BlockAllocator:
    """Decides which free KV blocks a request receives, and so which cached blocks are evicted.

    ``take(pool, n)`` must return ``n`` distinct blocks that are in ``pool.free_block_queue`` and
    REMOVE them from it (``free_block_queue.popleft_n`` / ``.remove``); the pool then evicts their
    cached hashes and sets ``ref_cnt = 1``. Free blocks with a hash are cached-but-free: taking one
    evicts it from the prefix cache. Block 0 (the null block) is never in the free queue.
    ``on_free(blocks)`` sees blocks whose ``ref_cnt`` just dropped to 0 (already back in the queue).
    ``admit(request)`` can keep a waiting request out this step (e.g. a per-tenant quota). With
    ``admits_by_tenant = True`` a refusal keeps the request's whole tenant out for the rest of the
    step (its later requests are not asked): FIFO within a tenant, and a step stays cheap when many
    requests wait (see ``policies.queue.TenantQueue``).
    """

    name: ClassVar[str] = ""
    admits_by_tenant: ClassVar[bool] = False

    def bind(self, pool: BlockPool, scheduler: Scheduler) -> None:
        self.pool = pool
        self.scheduler = scheduler

    def take(self, pool: BlockPool, num_blocks: int) -> list[KVCacheBlock]:
        return pool.free_block_queue.popleft_n(num_blocks)  # vLLM: front of the free queue

    def on_free(self, blocks: list[KVCacheBlock]) -> None:
        pass

    def admit(self, request: Request) -> bool:
        return True

    @property
    def replaces_pool(self) -> bool:
        """Whether the BlockPool must be switched to ``PolicyBlockPool`` (False keeps stock vLLM)."""
        cls = type(self)
        return cls.take is not BlockAllocator.take or cls.on_free is not BlockAllocator.on_free

    def describe(self) -> str:
        return self.name or type(self).__qualname__


def iter_free_blocks(pool: BlockPool):
    """The blocks of ``pool.free_block_queue`` front to back (front = vLLM's next to hand out)."""
    queue = pool.free_block_queue
    block = queue.fake_free_list_head.next_free_block
    tail = queue.fake_free_list_tail
    while block is not None and block is not tail:
        yield block
        block = block.next_free_block
