"""The invariant checker counts block references the way vLLM 0.32 does: no false alarms on vLLM's
HiSparse KV cache groups (a host-tier group with its own pool and block ids beside GPU-resident
groups) or while a KV connector's loads hold blocks in ``kv_holding_waiting``, still an alarm on a
real inconsistency. Real Scheduler, real HiSparse managers and
coordinator (its CUDA-only worker and connector are not needed for the scheduler-side bookkeeping)."""

from __future__ import annotations

import random

import pytest
import torch
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorMetadata
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.hisparse.coordinator import get_hisparse_coordinator
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    HiSparseResidentSpec,
    KVCacheConfig,
    KVCacheGroupRole,
    KVCacheGroupSpec,
)
from vllm.v1.outputs import KVConnectorOutput
from vllm.v1.structured_output import StructuredOutputManager

import policies
from policies.allocators.lowest_id import LowestIdAllocator
from policies.driver import fake_model_output, run, step
from policies.inprocess import make_request, make_vllm_config
from policies.invariants import AllocatorInvariantError
from serving.models import write_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir("tiny", tmp_path_factory.mktemp("model"))


def hisparse_scheduler(model_dir, allocator="default", num_blocks=64, host_blocks=128) -> Scheduler:
    """PolicyScheduler over vLLM's HiSparse layout: group 0 is the host source (every page gets a block
    of the host pool, ids 1..host_blocks-1), group 1 the GPU-resident pages (the scheduler's pool)."""
    cls = policies.scheduler_class()
    config = make_vllm_config(model_dir, num_blocks=num_blocks, scheduler_cls=cls, max_num_seqs=8,
                              additional_config=policies.schedlab_config(allocator=allocator, check_invariants=True))
    full = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=64, dtype=torch.float32)
    groups = [KVCacheGroupSpec(["host"], full, host_resident=True, role=KVCacheGroupRole.HISPARSE_SOURCE),
              KVCacheGroupSpec(["resident"], HiSparseResidentSpec(block_size=16, page_size=1024))]
    kv_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups,
                              hisparse_host_num_blocks=host_blocks)
    sched = cls(vllm_config=config, kv_cache_config=kv_config, structured_output_manager=StructuredOutputManager(config),
                block_size=16, log_stats=True)
    get_hisparse_coordinator(sched.kv_cache_manager)  # what HiSparseConnector does at bind time: the host pool
    return sched


def tokens(seed, n):
    rng = random.Random(seed)
    return [rng.randint(3, 500) for _ in range(n)]


def test_host_pool_blocks_are_not_counted_against_the_gpu_pool(model_dir):
    sched = hisparse_scheduler(model_dir)
    host, resident = sched.kv_cache_manager.coordinator.single_type_managers
    assert host.block_pool is not sched.kv_cache_manager.block_pool
    sched.add_request(make_request("a", tokens(0, 37), 4))
    step(sched)  # checked mode: raised "block 1 has ref_cnt=1 < 2 owning requests" before the fix
    # by hand: a's 37 tokens take 3 pages in each group, host ids 1..3 and GPU ids 1..3, so a count over
    # all groups sees id 1 twice while the GPU block 1 has one reference: the old false alarm
    assert [b.block_id for b in host.req_to_blocks["a"]] == [1, 2, 3]
    assert [b.block_id for b in resident.req_to_blocks["a"]] == [1, 2, 3]
    assert sched.kv_cache_manager.block_pool.blocks[1].ref_cnt == 1


@pytest.mark.parametrize("allocator", ["default", "lowest_id"])
def test_no_false_alarm_on_a_hisparse_workload(model_dir, allocator):
    sched = hisparse_scheduler(model_dir, allocator)
    reqs = [make_request(f"r{i}", tokens(i, 20 + 7 * i), 6 + i) for i in range(8)]
    trace = run(sched, reqs)  # checked after every schedule() and update_from_output()
    assert sorted(trace.finished) == sorted(r.request_id for r in reqs)


def test_still_alarms_on_a_real_inconsistency(model_dir):
    sched = hisparse_scheduler(model_dir)
    sched.add_request(make_request("a", tokens(0, 37), 4))
    step(sched)
    sched.kv_cache_manager.block_pool.blocks[2].ref_cnt = 0  # GPU block 2 still in a's table
    with pytest.raises(AllocatorInvariantError, match=r"allocator 'default'.*block 2 has ref_cnt=0 but is not in the free queue"):
        sched.check_invariants()


# ---- a KV connector's async loads: requests hold blocks while waiting (kv_holding_waiting) ----

class FakeLoadingConnector(KVConnectorBase_V1):
    """A fake scheduler-side KV connector (no transfer backend runs here): a request's
    ``remote_tokens`` prompt tokens are "loaded" asynchronously, until the test reports them received."""

    def start_load_kv(self, forward_context, **kwargs): pass
    def wait_for_layer_load(self, layer_name): pass
    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs): pass
    def wait_for_save(self): pass
    def update_state_after_alloc(self, request, blocks, num_external_tokens): pass
    def build_connector_meta(self, scheduler_output): return KVConnectorMetadata()

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        n = max(0, (request.sampling_params.extra_args or {}).get("remote_tokens", 0) - num_computed_tokens)
        return n, n > 0


class RecordingLowestId(LowestIdAllocator):
    seen: list = []

    def choose(self, free, alloc):
        RecordingLowestId.seen.append((alloc.request_id, alloc.num_blocks, alloc.first_block_index))
        return super().choose(free, alloc)


def test_async_kv_loads_hold_blocks_in_kv_holding_waiting_without_false_alarm(model_dir):
    cls = policies.scheduler_class()
    config = make_vllm_config(model_dir, num_blocks=64, scheduler_cls=cls, additional_config=policies.schedlab_config(
        allocator=f"{__name__}.RecordingLowestId", check_invariants=True))
    config.scheduler_config.disable_hybrid_kv_cache_manager = True  # the fake connector is not HMA-aware
    config.kv_transfer_config = KVTransferConfig(kv_connector="FakeLoadingConnector", kv_connector_module_path=__name__,
                                                 kv_role="kv_both")
    groups = [KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=64, dtype=torch.float32))]
    sched = cls(vllm_config=config, kv_cache_config=KVCacheConfig(num_blocks=64, kv_cache_tensors=[], kv_cache_groups=groups),
                structured_output_manager=StructuredOutputManager(config), block_size=16, log_stats=True)
    RecordingLowestId.seen = []
    sched.add_request(make_request("remote", tokens(0, 57), 3, extra_args={"remote_tokens": 48}))
    sched.add_request(make_request("local", tokens(1, 40), 3))
    holding = []
    for i in range(8):  # checked mode: the pool is verified after every schedule() and update_from_output()
        so = sched.schedule()
        holding.append([r.request_id for r in sched.kv_holding_waiting])
        out = fake_model_output(sched, so)
        if i == 1:
            out.kv_connector_output = KVConnectorOutput(finished_recving={"remote"})
        sched.update_from_output(so, out)
    assert holding[:2] == [["remote"], ["remote"]] and holding[2] == []
    # by hand (lowest_id): remote's 48 loaded tokens get blocks 1-3 while it waits, local's 40 tokens 4-6;
    # once loaded, remote's 9 remaining prompt tokens need its 4th block: 7
    assert RecordingLowestId.seen == [("remote", 3, 0), ("local", 3, 0), ("remote", 1, 3)]
    assert not sched.has_requests()
