"""Policies by short name (``sjf``) or by dotted path to a user's class (``mypkg.mymod.MyPolicy``).

A dotted path must be importable in the process that runs the scheduler (for ``vllm serve``: the
engine-core process, so put your package on ``PYTHONPATH`` or install it).
"""

from __future__ import annotations

import importlib
from typing import Any

from policies.base import BlockAllocator, EvictionPolicy, SchedulingPolicy

SCHEDULING_POLICIES: dict[str, str] = {
    "fcfs": "policies.scheduling.fcfs.FCFS",
    "priority": "policies.scheduling.priority.Priority",
    "sjf": "policies.scheduling.sjf.SJF",
    "ljf": "policies.scheduling.ljf.LJF",
    "edf": "policies.scheduling.edf.EDF",
    "vtc": "policies.scheduling.vtc.VTC",
    "mlfq": "policies.scheduling.mlfq.MLFQ",
    "fastserve": "policies.scheduling.fastserve.FastServe",
    "las": "policies.scheduling.las.LAS",
    "lpm": "policies.scheduling.lpm.LPM",
    "sarathi": "policies.scheduling.sarathi.Sarathi",
    "andes": "policies.scheduling.andes.Andes",
}

BLOCK_ALLOCATORS: dict[str, str] = {
    "default": "policies.allocators.default.DefaultAllocator",
    "lowest_id": "policies.allocators.lowest_id.LowestIdAllocator",
    "random": "policies.allocators.random.RandomAllocator",
    "fifo_evict": "policies.allocators.fifo_evict.FIFOEvictAllocator",
    "lru_evict": "policies.allocators.lru_evict.LRUEvictAllocator",
    "tenant_quota": "policies.allocators.tenant_quota.TenantQuotaAllocator",
    "tenant_partition": "policies.allocators.tenant_partition.TenantPartitionAllocator",
    "lifetime": "policies.allocators.lifetime.LifetimeAllocator",
}

EVICTION_POLICIES: dict[str, str] = {
    "lru": "policies.eviction.lru.LRU",
    "fifo": "policies.eviction.fifo.FIFO",
    "lfu": "policies.eviction.lfu.LFU",
    "shared_prefix": "policies.eviction.shared_prefix.SharedPrefix",
}


def _resolve(kind: str, name: str, known: dict[str, str], base: type) -> type:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} must be a non-empty string, got {name!r}")
    path = known.get(name)
    if path is None:
        if "." not in name:
            raise ValueError(
                f"unknown {kind} {name!r}; known: {', '.join(sorted(known))} "
                f"(or a dotted path to your own class, e.g. 'mypkg.mymod.MyClass')"
            )
        path = name
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {kind} {name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{kind} {name!r} is {cls!r}, not a subclass of {base.__module__}.{base.__qualname__}")
    return cls


def scheduling_policy_class(name: str) -> type[SchedulingPolicy]:
    return _resolve("scheduling policy", name, SCHEDULING_POLICIES, SchedulingPolicy)


def block_allocator_class(name: str) -> type[BlockAllocator]:
    return _resolve("block allocator", name, BLOCK_ALLOCATORS, BlockAllocator)


def _build(cls: type, name: str, args: dict[str, Any] | None):
    try:
        obj = cls(**(args or {}))
    except (TypeError, ValueError) as e:  # unknown parameter, or a value the class rejects
        raise ValueError(f"bad arguments {args!r} for {name!r}: {e}") from e
    if not type(obj).__dict__.get("name"):  # unnamed, or a subclass inheriting a built-in's name
        obj.name = name
    return obj


def load_policy(name: str, args: dict[str, Any] | None = None) -> SchedulingPolicy:
    """An instance of the scheduling policy ``name`` built with keyword arguments ``args``."""
    return _build(scheduling_policy_class(name), name, args)


def eviction_policy_class(name: str) -> type[EvictionPolicy]:
    return _resolve("eviction policy", name, EVICTION_POLICIES, EvictionPolicy)


def load_eviction(name: str, args: dict[str, Any] | None = None) -> EvictionPolicy:
    """An instance of the eviction policy ``name`` built with keyword arguments ``args``."""
    return _build(eviction_policy_class(name), name, args)


def load_allocator(name: str, args: dict[str, Any] | None = None) -> BlockAllocator:
    """An instance of the block allocator ``name`` built with keyword arguments ``args``; the keys
    ``eviction`` / ``eviction_args`` choose its eviction policy (default: the class's ``eviction``)."""
    args = dict(args or {})
    eviction, eviction_args = args.pop("eviction", None), args.pop("eviction_args", None)
    allocator = _build(block_allocator_class(name), name, args)
    try:
        allocator.eviction_policy = load_eviction(eviction or type(allocator).eviction, eviction_args)
    except ValueError as e:
        raise ValueError(f"allocator {name!r}: {e}") from e
    return allocator
