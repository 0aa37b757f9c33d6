"""End-to-end replay against the real CPU `vllm serve` (one server for the module)."""

from __future__ import annotations

import pytest

from serving.server import VLLMServer
from workloads import materialize, synthetic
from workloads.loadgen import replay
from workloads.metrics import summarize
from workloads.server_metrics import SAMPLE_COLUMNS, replay_with_server_metrics, server_summary


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = VLLMServer(tiny_model_dir, extra_args=["--max-num-seqs", "16"],
                     log_path=tmp_path_factory.mktemp("loadgen-srv") / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.server
def test_replay_50_requests(server, tiny_model_dir):
    reqs = synthetic(num_requests=50, rate=25.0, prompt_len="uniform:4:64", output_len="uniform:2:16",
                     tenants={"a": 1, "b": 1}, seed=11)
    materialize(reqs, tiny_model_dir)
    res = replay_with_server_metrics(server.url, server.model_name, reqs, warmup=2, sample_interval_s=0.2,
                                     request_timeout_s=120)
    measured = [r for r in res.records if not r.warmup]
    assert len(measured) == 50
    by_id = {r.request_id: r for r in reqs}
    for rec in measured:
        assert rec.ok, rec.error
        assert rec.output_tokens == rec.requested_output_tokens == by_id[rec.request_id].output_len
        assert rec.prompt_tokens == by_id[rec.request_id].prompt_len  # token-id prompts: exact lengths
        assert 0 < rec.ttft_s < rec.e2e_s
        assert len(rec.itl_s) == rec.output_tokens - 1
    m = summarize(res.records)
    assert m["num_completed"] == 50 and m["num_failed"] == 0 and m["num_short_outputs"] == 0
    # open loop: sent on schedule while the server works (the median: a loaded CI box has stalls)
    lags = sorted(round((r.actual_send_s - r.scheduled_send_s) * 1e3, 1) for r in measured)
    assert m["send_lag_ms_p50"] < 20, lags
    s = server_summary(res.server_before, res.server_after, res.samples)
    assert s["server_num_requests_success"] == 50  # warm-up finished before the "before" scrape
    assert s["server_generation_tokens"] == sum(r.output_len for r in reqs)
    assert list(res.samples.columns) == SAMPLE_COLUMNS and len(res.samples) >= 3
    assert res.samples["kv_cache_usage"].between(0, 1).all() and (res.samples["num_waiting"] >= 0).all()


@pytest.mark.server
def test_shared_prefixes_hit_the_prefix_cache(server, tiny_model_dir):
    # 6 requests sharing one 512-token block (Mooncake-style hash id), sent one after another
    reqs = synthetic(num_requests=6, rate=2.0, prompt_len=600, output_len=2, prefix_groups=1, prefix_blocks=1,
                     seed=5)
    materialize(reqs, tiny_model_dir)
    res = replay_with_server_metrics(server.url, server.model_name, reqs, closed_loop_users=1)
    assert all(r.ok for r in res.records)
    s = server_summary(res.server_before, res.server_after, res.samples)
    assert s["server_prefix_cache_queries"] == 6 * 600
    assert s["server_prefix_cache_hits"] >= 5 * 256  # later requests reuse (most of) the shared block
    # the same lengths without shared ids do not hit
    plain = synthetic(num_requests=3, rate=2.0, prompt_len=600, output_len=2, seed=6)
    materialize(plain, tiny_model_dir)
    res2 = replay_with_server_metrics(server.url, server.model_name, plain, closed_loop_users=1)
    assert server_summary(res2.server_before, res2.server_after, None)["server_prefix_cache_hits"] == 0
    assert replay(server.url, server.model_name, plain[:1])[0].ok
