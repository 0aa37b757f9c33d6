"""The plugin interfaces: ``SchedulingPolicy``, ``BlockAllocator`` (placement) and ``EvictionPolicy``.

All see vLLM's own objects (``vllm.v1.request.Request``, ``BlockPool``, ``KVCacheBlock``); the
accessor functions below read the request metadata a policy may use, so policies never poke at
vLLM internals directly.

A subclass declares its parameters as keyword arguments of ``__init__``; ``policy_args`` /
``allocator_args`` from the config are passed there (an unknown parameter is a ``TypeError``
naming it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import KVCacheBlock
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.core.sched.request_queue import RequestQueue
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request

    from policies.block_pool import FreeBlocks


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

@dataclass(frozen=True)
class PrefillLimits:
    """Per-step prefill control (``SchedulingPolicy.prefill_limits``); ``None`` = vLLM's configured value.

    - ``max_partial_prefills``: at most this many requests prefill at once; a waiting request is
      admitted only while fewer running requests are mid-prefill (those admitted this step count);
    - ``chunk_tokens``: at most this many tokens per request per step (Sarathi-Serve's chunk size;
      vLLM's ``long_prefill_token_threshold``, which it lifts when only one request is in the system);
    - ``step_tokens``: at most this many tokens per step in all (Sarathi-Serve's token budget;
      vLLM's ``max_num_scheduled_tokens``, never above ``max_num_batched_tokens``).
    """

    max_partial_prefills: int | None = None
    chunk_tokens: int | None = None
    step_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_partial_prefills", "chunk_tokens", "step_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"PrefillLimits.{name} must be a positive int or None, got {value!r}")


class PolicyError(RuntimeError):
    """A policy hook returned something vLLM cannot act on (the message names the policy)."""


class SchedulingPolicy:
    """Decides the waiting-queue order, per-step admission, preemption and prefill limits.

    Override only what you need; every default is vLLM's FCFS behaviour (full table with when each
    hook runs: docs/writing-a-policy.md):

    - ``waiting_key(request)``: sort key of a waiting request, smaller is admitted first (ties:
      earlier arrival). Evaluated when the request enters the waiting queue and, if the policy
      sets ``rekey_every = k > 0``, again for every waiting request every ``k`` steps (keys that
      change while requests wait: aging, least slack, cache-aware).
    - ``admit(request)``: False keeps the request waiting this step (others behind it may go).
    - ``preemption_key(request)``: running requests are sorted by it before each step; when KV
      blocks run out the one with the LARGEST key is preempted first.
    - ``to_preempt()``: before each step, running requests to preempt now (proactive preemption,
      e.g. a newly arrived higher-priority request displaces a lower one). They go back to the
      waiting queue through vLLM's own ``_preempt_request`` and are not re-admitted this step.
    - ``prefill_limits()``: before each step, a ``PrefillLimits`` (or None: vLLM's config).
    - ``on_schedule(output)``: called after every ``schedule()`` with vLLM's ``SchedulerOutput``.
    - ``make_queue()``: a whole custom ``RequestQueue``.

    Readable from any hook: ``now()`` / ``waited(request)`` (the engine's clock, same basis as
    ``request.arrival_time``: wall time on a server, virtual time in the simulator),
    ``cached_prefix_len(request)`` (prompt tokens the prefix cache holds for a waiting request).
    """

    name: ClassVar[str] = ""
    rekey_every: int = 0  # re-evaluate waiting_key of every waiting request every k steps (0: never)

    def bind(self, scheduler: Scheduler) -> None:
        """Called once with the live scheduler (``scheduler.running``, ``.requests``, ...)."""
        self.scheduler = scheduler

    def waiting_key(self, request: Request) -> Any:
        raise NotImplementedError  # not overridden -> vLLM's own FCFS queue is kept

    def preemption_key(self, request: Request) -> Any:
        raise NotImplementedError  # not overridden -> vLLM preempts the last admitted request

    def admit(self, request: Request) -> bool:
        return True

    def to_preempt(self) -> Iterable[Request]:
        return ()  # not overridden -> no proactive preemption (and no per-step call)

    def prefill_limits(self) -> PrefillLimits | None:
        return None  # not overridden -> vLLM's configured limits (and no per-step call)

    def stale_keys(self) -> Iterable[Request] | None:
        """Asked every ``rekey_every`` steps: the waiting requests whose ``waiting_key`` may have
        changed since the last call (only those are re-keyed, O(k log n); requests no longer
        waiting are ignored), or None: re-key all of them (O(n))."""
        return None

    def on_schedule(self, output: SchedulerOutput) -> None:
        pass

    def make_queue(self) -> RequestQueue | None:
        """A custom ``RequestQueue`` (interface: docs/writing-a-policy.md). None: a heap on
        ``waiting_key`` (or vLLM's FCFS deque if ``waiting_key`` is not overridden)."""
        return None

    # -- what a policy may read --

    def now(self) -> float:
        """The engine's clock in seconds, on the basis of ``request.arrival_time`` (epoch seconds on
        a server and in-process by default, virtual seconds in the simulator)."""
        return self.scheduler.clock()

    def waited(self, request: Request) -> float:
        """Seconds since ``request`` arrived at the engine (time in the system, preemptions included)."""
        return self.scheduler.clock() - request.arrival_time

    def cached_prefix_len(self, request: Request) -> int:
        """Prompt tokens of a waiting request that vLLM's prefix cache would serve if it were admitted
        now (0 without prefix caching). Costs one hash lookup per prompt block."""
        from policies.vllm_glue import cached_prefix_tokens

        return cached_prefix_tokens(self.scheduler, request)

    def iter_waiting(self) -> Iterator[Request]:
        """Waiting requests, best first (in the order vLLM will consider them). Lazy: reading the
        first few is cheap. Do not preempt or admit while iterating."""
        from policies.vllm_glue import iter_waiting

        return iter_waiting(self.scheduler)

    def free_slots(self) -> int:
        """How many more requests vLLM would admit into the running batch (``max_num_seqs`` minus
        the running ones)."""
        from policies.vllm_glue import num_free_slots

        return num_free_slots(self.scheduler)

    def free_kv_blocks(self) -> int:
        """Free KV blocks now (cached-but-free included: vLLM evicts those on demand)."""
        from policies.vllm_glue import num_free_kv_blocks

        return num_free_kv_blocks(self.scheduler)

    def kv_blocks_needed(self, request: Request) -> int:
        """New KV blocks a waiting request needs for all its tokens (prefix-cache hit aside)."""
        from policies.vllm_glue import kv_blocks_needed

        return kv_blocks_needed(self.scheduler, request)

    def kv_blocks_freed_by(self, request: Request) -> int:
        """KV blocks that preempting this running request would free (those no other request holds)."""
        from policies.vllm_glue import kv_blocks_freed_by

        return kv_blocks_freed_by(self.scheduler, request)

    @property
    def orders_waiting(self) -> bool:
        return type(self).waiting_key is not SchedulingPolicy.waiting_key

    @property
    def orders_victims(self) -> bool:
        return type(self).preemption_key is not SchedulingPolicy.preemption_key

    @property
    def preempts(self) -> bool:
        return type(self).to_preempt is not SchedulingPolicy.to_preempt

    @property
    def limits_prefill(self) -> bool:
        return type(self).prefill_limits is not SchedulingPolicy.prefill_limits

    def describe(self) -> str:
        return self.name or type(self).__qualname__


# ---- KV block allocation ----

class Allocation:
    """One new-block allocation, as vLLM's KV cache manager asks for it.

    ``request`` is the vLLM ``Request`` (None only if vLLM allocates outside a request's call, which
    vLLM 0.32 does not); ``num_blocks`` the number of block ids to choose; ``first_block_index`` the
    position of the first new block in the request's block table, i.e. the blocks it already holds in
    this KV cache ``group``. Prefix-cache hits never reach the allocator (vLLM touches cached blocks).
    """

    __slots__ = ("request", "request_id", "num_blocks", "first_block_index", "group")

    def __init__(self, request: Request | None, request_id: str | None, num_blocks: int,
                 first_block_index: int = 0, group: int = 0) -> None:
        self.request = request
        self.request_id = request_id
        self.num_blocks = num_blocks
        self.first_block_index = first_block_index
        self.group = group

    @property
    def tenant(self) -> str:
        return tenant(self.request) if self.request is not None else "default"

    @property
    def is_prefill(self) -> bool:
        """True for prompt blocks (a first chunk, a later chunk, or the recompute after a
        preemption); False for decode growth (blocks for newly generated tokens)."""
        r = self.request
        if r is None:
            return False
        return r.num_computed_tokens < max(r.num_prompt_tokens, r.num_tokens - 1)

    def __repr__(self) -> str:
        return (f"Allocation(request_id={self.request_id!r}, num_blocks={self.num_blocks}, "
                f"first_block_index={self.first_block_index}, group={self.group})")


class BlockAllocator:
    """Decides which free KV blocks a request receives (placement).

    ``choose(free, alloc)`` returns ``alloc.num_blocks`` distinct ids of free blocks for the request
    ``alloc.request``. It only *chooses*: the pool unlinks the ids from vLLM's free queue, evicts their
    prefix-cache hashes and sets their ref counts, after checking the choice (a used block, the null
    block, a duplicate or a wrong count is a ``BlockChoiceError`` naming this allocator and the block,
    and the pool is left as it was). ``free`` (``policies.block_pool.FreeBlocks``) answers "is this id
    free / cached", hands out vLLM's own next blocks (``front_uncached``) and asks the eviction policy
    for victims (``evict``): a free block with a prefix-cache hash is cached-but-free, and choosing it
    evicts that prefix. Not overriding ``choose`` keeps vLLM's own BlockPool code untouched.

    ``on_free(blocks)`` sees every block whose ``ref_cnt`` just dropped to 0, in vLLM's eviction order
    (keep an index of free ids here: choosing must not walk all blocks). The eviction policy (which
    cached-but-free block is reused first, ``policies/eviction/``) is separate: ``allocator_args``
    ``{"eviction": "lfu", "eviction_args": {...}}``, default the class's ``eviction`` ("lru", vLLM's).

    ``admit(request)`` can keep a waiting request out this step (e.g. a per-tenant quota). With
    ``admits_by_tenant = True`` a refusal keeps the request's whole tenant out for the rest of the
    step (its later requests are not asked): FIFO within a tenant, and a step stays cheap when many
    requests wait (see ``policies.queue.TenantQueue``).
    """

    name: ClassVar[str] = ""
    admits_by_tenant: ClassVar[bool] = False
    eviction: ClassVar[str] = "lru"  # default eviction policy; allocator_args["eviction"] overrides it

    def bind(self, pool: BlockPool, scheduler: Scheduler) -> None:
        self.pool = pool
        self.scheduler = scheduler

    def choose(self, free: FreeBlocks, alloc: Allocation) -> list[int]:
        """vLLM's choice: recently freed uncached blocks first (LIFO), then eviction victims."""
        ids = free.front_uncached(alloc.num_blocks)
        return ids + free.evict(alloc.num_blocks - len(ids))

    def on_free(self, blocks: list[KVCacheBlock]) -> None:
        pass

    def admit(self, request: Request) -> bool:
        return True

    @property
    def replaces_pool(self) -> bool:
        """Whether the pool runs schedlab's choice path (False: stock vLLM, no hook at all)."""
        cls = type(self)
        return (cls.choose is not BlockAllocator.choose or cls.on_free is not BlockAllocator.on_free
                or self.eviction_policy.name != "lru")

    @property
    def eviction_policy(self) -> EvictionPolicy:
        """Attached by ``policies.load_allocator`` (``allocator_args["eviction"]``, else ``eviction``)."""
        policy = self.__dict__.get("_eviction_policy")
        if policy is None:
            raise PolicyError(f"block allocator {type(self).__qualname__} has no eviction policy: "
                              "build it with policies.load_allocator(name, args)")
        return policy

    @eviction_policy.setter
    def eviction_policy(self, policy: EvictionPolicy) -> None:
        self._eviction_policy = policy

    def describe(self) -> str:
        name = self.name or type(self).__qualname__
        evict = self.eviction_policy.name
        return name if evict == type(self).eviction else f"{name}+{evict}"


class EvictionPolicy:
    """Decides which cached-but-free block is reused first when uncached free blocks run out.

    ``on_free(blocks)``: blocks that joined the cached end of vLLM's free queue (a prefix-cache hash,
    or a pinned read), in vLLM's order; ``on_hit(blocks)``: prefix-cache hits touched these blocks
    (free or in use); ``evict(free, k)``: up to ``k`` ids of free blocks, first to evict first. Keep an
    index (a heap, an ordered dict) with lazy deletion: a block in the index may have been hit (it is
    then not free; ``free.is_free(id)`` says so) since it was indexed.
    """

    name: ClassVar[str] = ""

    def on_free(self, blocks: list[KVCacheBlock]) -> None:
        pass

    def on_hit(self, blocks: Sequence[KVCacheBlock]) -> None:
        pass

    def evict(self, free: FreeBlocks, k: int) -> list[int]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name or type(self).__qualname__


def iter_free_blocks(pool: BlockPool):
    """The blocks of ``pool.free_block_queue`` front to back (front = vLLM's next to hand out). O(all
    free blocks): for prototypes and checks, not for ``choose`` at scale."""
    from policies import vllm_glue

    return vllm_glue.free_queue_front(pool)
