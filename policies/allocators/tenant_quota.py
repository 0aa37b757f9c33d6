"""Per-tenant KV-block quota (static partitioning of the KV cache, the isolation baseline of
multi-tenant serving, cf. Sheng et al., "Fairness in Serving LLMs", OSDI'24 §2). A tenant's waiting
request is admitted only if the blocks its tenant holds plus the blocks its prompt needs fit in the
tenant's quota. A tenant holding no blocks is always admitted (so an over-large request cannot
starve), and running requests may grow past the quota: enforcing it by preemption would hit other
tenants' requests, which vLLM chooses as victims. Admission is per tenant (``admits_by_tenant``):
once a tenant's request does not fit, its later requests wait too (FIFO within a tenant), and the
step does not walk them. Block ids are vLLM's."""

from policies.base import BlockAllocator, tenant


class TenantQuotaAllocator(BlockAllocator):
    name = "tenant_quota"
    admits_by_tenant = True

    def __init__(self, quota_blocks: int, per_tenant: dict[str, int] | None = None) -> None:
        if quota_blocks < 1:
            raise ValueError(f"tenant_quota: quota_blocks must be >= 1, got {quota_blocks}")
        self.quota_blocks = quota_blocks
        self.per_tenant = dict(per_tenant or {})

        self._step = -1
        self._held: dict[str, int] = {}

    def held_blocks(self) -> dict[str, int]:
        """Blocks held per tenant, counted once per step and then updated by this step's admissions."""
        if self._step != self.scheduler.current_step:
            self._step = self.scheduler.current_step
            manager = self.scheduler.kv_cache_manager.coordinator.single_type_managers[0]
            self._held = {}
            for r in [*self.scheduler.running, *self.scheduler.kv_holding_waiting]:
                t = tenant(r)
                self._held[t] = self._held.get(t, 0) + len(manager.req_to_blocks.get(r.request_id, ()))
        return self._held

    def admit(self, request) -> bool:
        t, held = tenant(request), self.held_blocks()
        needed = -(-request.num_tokens // self.scheduler.block_size)
        if held.get(t, 0) and held[t] + needed > self.per_tenant.get(t, self.quota_blocks):
            return False
        held[t] = held.get(t, 0) + needed  # assume admitted (an allocation failure ends the step anyway)
        return True
