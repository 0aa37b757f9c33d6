"""Tenant-partitioned KV cache regions: the block ids 1..N-1 are cut into one contiguous region per
listed tenant (in ``tenants`` order, sizes proportional to ``shares``), and a tenant's blocks come
from its own region, lowest id first, while it has uncached free blocks (static partitioning, the
isolation baseline of multi-tenant serving, cf. Sheng et al., "Fairness in Serving LLMs", OSDI'24 §2,
and the per-tenant memory regions of classic multi-tenant allocators). When its region is full, a
request borrows uncached blocks from the other regions (lowest id first) and only then evicts cached
blocks by the eviction policy, vLLM's rule of using uncached blocks before evicting. Requests of an
unlisted tenant take the lowest uncached id anywhere. Prefix-cache hits are shared across tenants
(they are vLLM's)."""

from __future__ import annotations

import bisect

from policies.base import BlockAllocator
from policies.block_pool import IdHeap


class TenantPartitionAllocator(BlockAllocator):
    name = "tenant_partition"

    def __init__(self, tenants: list[str], shares: list[float] | None = None) -> None:
        if not tenants or len(set(tenants)) != len(tenants):
            raise ValueError(f"tenant_partition: tenants must be a non-empty list of distinct names, got {tenants!r}")
        shares = list(shares) if shares is not None else [1.0] * len(tenants)
        if len(shares) != len(tenants) or any(s <= 0 for s in shares):
            raise ValueError(f"tenant_partition: shares must be {len(tenants)} positive numbers, got {shares!r}")
        self.tenants, self.shares = list(tenants), shares
        self.region = {t: i for i, t in enumerate(tenants)}
        self.heaps = [IdHeap() for _ in tenants]
        self.starts: list[int] = []  # first block id of each region

    def bind(self, pool, scheduler):
        super().bind(pool, scheduler)
        usable, total, acc = len(pool.blocks) - 1, sum(self.shares), 0.0
        if usable < len(self.tenants):
            raise ValueError(f"tenant_partition: {usable} blocks cannot be split among {len(self.tenants)} tenants")
        for share in self.shares:
            self.starts.append(1 + round(acc / total * usable))
            acc += share

    def regions(self) -> dict[str, range]:
        """Tenant -> its block ids."""
        ends = self.starts[1:] + [len(self.pool.blocks)]
        return {t: range(s, e) for t, s, e in zip(self.tenants, self.starts, ends)}

    def region_of(self, block_id: int) -> int:
        return bisect.bisect_right(self.starts, block_id) - 1

    def on_free(self, blocks):
        for block in blocks:
            if block.block_hash is None:
                self.heaps[self.region_of(block.block_id)].push_all((block.block_id,))

    def choose(self, free, alloc):
        n, own = alloc.num_blocks, self.region.get(alloc.tenant)
        ids = self.heaps[own].pop(n, free.is_uncached) if own is not None else []
        for i, heap in enumerate(self.heaps):  # borrow: other regions in id order
            if len(ids) == n:
                break
            if i != own:
                ids += heap.pop(n - len(ids), free.is_uncached)
        return ids + free.evict(n - len(ids))
