"""Metric math on hand-made records: percentiles, goodput, fairness, send lag, Parquet, /metrics parsing."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workloads.metrics import jain_index, load_records, records_frame, save_parquet, summarize
from workloads.records import RequestRecord
from workloads.server_metrics import KV_USAGE, RUNNING, WAITING, parse, parse_gauges, server_summary


def _rec(i, ttft_ms, e2e_ms, out, tenant="a", lag_ms=0.0, **kw):
    itl = (e2e_ms - ttft_ms) / 1e3 / (out - 1) if out > 1 else 0.0
    return RequestRecord(
        request_id=f"r{i}", tenant=tenant, scheduled_send_s=i * 0.1, actual_send_s=i * 0.1 + lag_ms / 1e3,
        ttft_s=ttft_ms / 1e3, e2e_s=e2e_ms / 1e3, itl_s=[itl] * (out - 1), prompt_tokens=10,
        output_tokens=out, requested_output_tokens=out, status=200, **kw)


@pytest.fixture
def records():
    # tenant a: ttft 10..50 ms, 11 output tokens, tpot = (e2e - ttft) / 10
    recs = [_rec(i, 10.0 * (i + 1), 10.0 * (i + 1) + 100.0 * (i + 1), 11, lag_ms=float(i)) for i in range(5)]
    recs.append(_rec(5, 5.0, 305.0, 31, tenant="b"))  # tpot 10 ms
    recs.append(RequestRecord("r6", tenant="b", scheduled_send_s=0.6, actual_send_s=0.6, status=500,
                              error="HTTP 500: boom", requested_output_tokens=8))
    recs.append(_rec(7, 1.0, 2.0, 2, warmup=True))  # excluded everywhere
    return recs


def test_percentiles_and_counts(records):
    m = summarize(records, duration_s=2.0)
    assert m["num_requests"] == 7 and m["num_completed"] == 6 and m["num_failed"] == 1
    a_ttft = [10, 20, 30, 40, 50, 5]
    assert m["ttft_ms_mean"] == pytest.approx(sum(a_ttft) / 6)
    # numpy linear interpolation on sorted [5, 10, 20, 30, 40, 50]
    assert m["ttft_ms_p50"] == pytest.approx(25.0)
    assert m["ttft_ms_p90"] == pytest.approx(45.0)
    assert m["ttft_ms_p99"] == pytest.approx(49.5)
    # tpot of tenant a = 10, 20, 30, 40, 50 ms; tenant b = 10 ms
    assert m["tpot_ms_p50"] == pytest.approx(25.0)
    assert m["itl_ms_mean"] == pytest.approx((10 + 20 + 30 + 40 + 50) * 10 / 80 + 10 * 30 / 80)
    assert m["e2e_ms_p99"] == pytest.approx(440 + 0.95 * (550 - 440))  # sorted [110, 220, 305, 330, 440, 550]
    assert m["request_throughput"] == pytest.approx(3.0)
    assert m["output_token_throughput"] == pytest.approx((5 * 11 + 31) / 2.0)
    assert m["input_token_throughput"] == pytest.approx(60 / 2.0)
    assert m["send_lag_ms_max"] == pytest.approx(4.0)
    assert m["send_lag_ms_p50"] == pytest.approx(1.0)  # lags sorted [0, 0, 0, 1, 2, 3, 4]


def test_goodput_under_slos(records):
    none = summarize(records, duration_s=2.0)
    assert none["goodput"] == pytest.approx(3.0)  # no SLO: every completed request counts
    m = summarize(records, duration_s=2.0, slo_ttft_ms=35.0, slo_tpot_ms=25.0)
    # passing: a0 (10 ms, 10 ms), a1 (20 ms, 20 ms), b (5 ms, 10 ms); a2 fails tpot, a3/a4 fail ttft
    assert m["goodput"] == pytest.approx(3 / 2.0)
    assert m["goodput_fraction"] == pytest.approx(3 / 7)
    assert m["tenant.a.goodput"] == pytest.approx(1.0) and m["tenant.b.goodput"] == pytest.approx(0.5)


def test_jain_fairness(records):
    assert jain_index([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([100, 300]) == pytest.approx(0.8)
    m = summarize(records, duration_s=2.0)
    a, b = 55 / 2.0, 31 / 2.0
    assert m["tenant.a.output_token_throughput"] == pytest.approx(a)
    assert m["jain_fairness"] == pytest.approx((a + b) ** 2 / (2 * (a * a + b * b)))
    assert m["tenant.b.num_failed"] == 1 and m["num_tenants"] == 2
    assert summarize([r for r in records if r.tenant == "a"])["jain_fairness"] == 1.0


def test_duration_deadlines_and_empty():
    recs = [_rec(0, 10, 100, 5, deadline_s=0.5), _rec(1, 10, 900, 5, deadline_s=0.5)]
    m = summarize(recs)
    assert m["duration_s"] == pytest.approx(0.1 + 0.9)  # first send -> last completion
    assert m["deadline_met_fraction"] == 0.5
    assert m["num_short_outputs"] == 0
    recs[0].output_tokens = 3
    assert summarize(recs)["num_short_outputs"] == 1
    empty = summarize([])
    assert empty["num_requests"] == 0 and math.isnan(empty["ttft_ms_p99"]) and math.isnan(empty["request_throughput"])


def test_parquet_roundtrip(records, tmp_path):
    df = records_frame(records)
    assert list(df["ok"]) == [True] * 6 + [False, True]
    assert df["send_lag_s"].iloc[4] == pytest.approx(0.004)
    path = save_parquet(records, tmp_path / "run" / "records.parquet")
    assert pd.read_parquet(path).shape[0] == len(records)
    back = load_records(path)
    assert back == records


PROM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="schedlab"} 3.0
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="schedlab"} 15.0
vllm:num_preemptions_created{engine="0",model_name="schedlab"} 1.79e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="schedlab"} 256.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="schedlab"} 1024.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="schedlab"} 2.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="schedlab"} 30.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="schedlab"} 30.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="schedlab"} 32.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="schedlab"} 32.0
"""


def test_prometheus_parse_and_server_summary():
    m = parse(PROM)
    assert m["vllm:num_requests_running"] == 3.0
    assert m["vllm:request_success_total"] == 32.0  # summed over finished reasons
    assert m["vllm:e2e_request_latency_seconds_count"] == 32.0
    assert not any(k.endswith(("_bucket", "_created")) for k in m)
    fast = parse_gauges(PROM, (RUNNING, WAITING, KV_USAGE, "vllm:request_success_total"))
    assert fast == {RUNNING: 3.0, "vllm:request_success_total": 32.0}
    before = {"vllm:num_preemptions_total": 5.0, "vllm:prefix_cache_hits_total": 56.0,
              "vllm:prefix_cache_queries_total": 24.0}
    samples = pd.DataFrame({"t_s": [0, 1, 2], "num_running": [1, 3, 2], "num_waiting": [0, 4, 2],
                            "kv_cache_usage": [0.1, 0.5, 0.3]})
    s = server_summary(before, m, samples)
    assert s["server_num_preemptions"] == 10.0
    assert s["server_prefix_cache_hit_rate"] == pytest.approx(200 / 1000)
    assert s["server_kv_cache_usage_mean"] == pytest.approx(0.3) and s["server_kv_cache_usage_max"] == 0.5
    assert s["server_num_waiting_max"] == 4 and s["server_num_running_mean"] == pytest.approx(2.0)
    assert math.isnan(server_summary({}, {}, None)["server_prefix_cache_hit_rate"])
