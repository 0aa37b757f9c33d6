"""End to end: a real CPU `vllm serve` with a request-aware allocator (tenant-partitioned regions)
and FastServe's proactive preemption (one server start)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest

import policies
from serving.server import VLLMServer

# tenant_partition that also appends every choice (tenant, block ids) to a file: the engine core
# runs in another process, so this is how the test sees what the allocator was asked and chose.
RECORDER = '''
import json

from policies.allocators.tenant_partition import TenantPartitionAllocator


class RecordingTenantPartition(TenantPartitionAllocator):
    def __init__(self, record_to, **kw):
        super().__init__(**kw)
        self.record_to = record_to

    def choose(self, free, alloc):
        ids = super().choose(free, alloc)
        with open(self.record_to, "a") as f:
            f.write(json.dumps({"tenant": alloc.tenant, "ids": [int(i) for i in ids]}) + "\\n")
        return ids
'''

FASTSERVE = {"num_levels": 3, "base_quantum": 8, "prompt_quantum": 256, "skip_join": True}
NUM_BLOCKS = 201  # block 0 is vLLM's null block; tenants A, B get ids 1-100 and 101-200


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    plugin_dir = tmp_path_factory.mktemp("plugin")
    (plugin_dir / "recording_alloc.py").write_text(RECORDER)
    record_to = plugin_dir / "choices.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(plugin_dir))  # schedlab_config validates the allocator here too
        args = policies.vllm_args("fastserve", FASTSERVE, "recording_alloc.RecordingTenantPartition",
                                  {"tenants": ["A", "B"], "record_to": str(record_to)}, check_invariants=True)
    args += ["--max-num-seqs", "1", "--num-gpu-blocks-override", str(NUM_BLOCKS), "--max-model-len", "2048"]
    srv = VLLMServer(tiny_model_dir, extra_args=args, env={"PYTHONPATH": str(plugin_dir)},
                     log_path=tmp_path_factory.mktemp("srv") / "server.log")
    srv.start()
    srv.record_to = record_to
    yield srv
    srv.stop()


def post(server, body):
    body = {"model": server.model_name, "ignore_eos": True, **body}
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=120)


@pytest.mark.server
def test_fastserve_preempts_proactively_with_tenant_regions_in_vllm_serve(server):
    log = server.log_path.read_text()
    assert re.search(r"schedlab: policy=fastserve allocator=recording_alloc.RecordingTenantPartition "
                     r"check_invariants=True", log), log[-3000:]

    # One slot. The blocker (tenant A, 600 tokens) streams; once 30 of its tokens arrived it has left
    # FastServe's level 0 (8 tokens) and level 1 (16 more), so the short request (tenant B, level 0)
    # must displace it at once: no free slot, and a higher level waits -> proactive preemption.
    # Without it the short request would wait for all 600 blocker tokens.
    done: dict[str, float] = {}
    chunks, usage = [], {}
    thirty = threading.Event()

    def blocker():
        with post(server, {"prompt": "warm up " * 4, "max_tokens": 600, "stream": True,
                           "stream_options": {"include_usage": True}, "vllm_xargs": {"tenant": "A"}}) as r:
            for line in r:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    chunks.extend(chunk["choices"])  # a chunk carries one or more tokens
                    usage.update(chunk.get("usage") or {})
                    if len(chunks) >= 30:
                        thirty.set()
        done["blocker"] = time.monotonic()

    t = threading.Thread(target=blocker)
    t.start()
    assert thirty.wait(timeout=120), "the blocker did not stream 30 tokens"
    with post(server, {"prompt": "hi", "max_tokens": 16, "vllm_xargs": {"tenant": "B"}}) as r:
        short = json.load(r)
    done["short"] = time.monotonic()
    t.join(timeout=180)

    assert short["usage"]["completion_tokens"] == 16
    assert usage["completion_tokens"] == 600 and set(done) == {"blocker", "short"}
    assert done["short"] < done["blocker"]

    # vLLM's own count of the preemption (the PREEMPTED event behind the metric)
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    preemptions = [float(v) for v in re.findall(r"^vllm:num_preemptions_total(?:\{[^}]*\})? ([0-9.e+]+)$", metrics, re.M)]
    assert preemptions and sum(preemptions) >= 1, metrics[-2000:]

    # The allocator was told each request's tenant and kept each tenant in its region; the blocker
    # allocated again after the short request had run (it was displaced, not finished).
    choices = [json.loads(line) for line in server.record_to.read_text().splitlines()]
    ids = {t: [i for c in choices if c["tenant"] == t for i in c["ids"]] for t in ("A", "B")}
    assert ids["A"] and ids["B"]
    assert all(1 <= i <= 100 for i in ids["A"]) and all(101 <= i <= 200 for i in ids["B"])
    tenants = [c["tenant"] for c in choices]
    first_b = tenants.index("B")
    assert "A" in tenants[:first_b] and "A" in tenants[first_b:]
    assert "AllocatorInvariantError" not in server.log_path.read_text()
