"""Load generator mechanics against the instant aiohttp server (no model): timing, caps, errors, body."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from workloads import Request, synthetic
from workloads.instant_server import InstantServer
from workloads.loadgen import replay
from workloads.metrics import summarize
from workloads.records import RequestRecord


def _trace(n, rate, out=4, **kw):
    t = synthetic(num_requests=n, rate=rate, prompt_len=8, output_len=out, seed=0, **kw)
    for r in t:
        r.prompt_token_ids = list(range(3, 3 + r.prompt_len))
    return t


def _stats(url):
    with urllib.request.urlopen(url + "/stats") as resp:
        return json.load(resp)


def _max_overlap(records):
    events = sorted([(r.actual_send_s, 1) for r in records] + [(r.actual_send_s + r.e2e_s, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    return max(np.cumsum([d for _, d in events]))


def test_open_loop_sends_on_schedule_without_waiting():
    # every response takes >= 300 ms, requests are due every ~10 ms: an open loop must not wait
    reqs = _trace(60, rate=100.0, out=3)
    with InstantServer(ttft_ms=300) as srv:
        recs = replay(srv.url, "instant", reqs)
        arrivals = np.asarray(_stats(srv.url)["arrivals"])
    assert all(r.ok and r.output_tokens == 3 and len(r.itl_s) == 2 for r in recs)
    lags = np.asarray([r.actual_send_s - r.scheduled_send_s for r in recs])
    # A loop that waited for responses would send each request >= 300 ms after the one before it: the
    # median lag would reach seconds. (The median, not p99: a pause of this busy machine may delay a few.)
    assert lags.min() >= 0 and np.median(lags) < 0.02
    assert _max_overlap(recs) > 20  # many in flight at once
    server_gaps = np.diff(np.sort(arrivals))
    trace_gaps = np.diff([r.arrival_s for r in reqs])
    assert abs(server_gaps.sum() - trace_gaps.sum()) < 0.25  # ~0.6 s of arrivals, vs >= 18 s if it waited
    assert all(r.ttft_s >= 0.3 and r.ttft_s < r.e2e_s for r in recs)


def test_max_concurrency_and_closed_loop():
    reqs = _trace(30, rate=float("inf"), out=2)  # all due at t=0
    with InstantServer(ttft_ms=50) as srv:
        capped = replay(srv.url, "instant", reqs, max_concurrency=4)
        closed = replay(srv.url, "instant", reqs, closed_loop_users=3)
    assert all(r.ok for r in capped + closed)
    assert _max_overlap(capped) == 4
    assert max(r.actual_send_s - r.scheduled_send_s for r in capped) > 0.3  # queued behind the cap
    assert _max_overlap(closed) == 3
    assert max(r.actual_send_s for r in closed) > 0.45  # ~10 rounds of 50 ms


def test_warmup_progress_and_request_body():
    reqs = _trace(10, rate=200.0, tenants={"gold": 1, "free": 1}, tenant_priority={"gold": -2},
                  deadline_s={"gold": 1.5}, output_len_hint=True)
    progress = []
    with InstantServer() as srv:
        recs = replay(srv.url, "instant", reqs, warmup=3, on_progress=lambda *a: progress.append(a))
        bodies = _stats(srv.url)["bodies"]
    assert [r.warmup for r in recs] == [True] * 3 + [False] * 10
    assert summarize(recs)["num_requests"] == 10
    assert progress[0] == (0, 10, 0) and progress[-1][:2] == (10, 10)
    measured = bodies[3:]
    by_tenant = {b["vllm_xargs"]["tenant"]: b for b in measured}
    gold, free = by_tenant["gold"], by_tenant["free"]
    assert gold["priority"] == -2 and gold["vllm_xargs"]["deadline_s"] == 1.5
    assert "priority" not in free and "deadline_s" not in free["vllm_xargs"]
    for b in measured:
        assert b["stream"] is True and b["ignore_eos"] is True and b["stream_options"] == {"include_usage": True}
        assert b["max_tokens"] == b["vllm_xargs"]["output_len_hint"] == 4


def test_errors_and_timeouts_are_records():
    reqs = _trace(4, rate=float("inf"))
    no_prompt = Request("np", 0.0, 5, 2)
    with InstantServer(ttft_ms=2000) as srv:
        slow = replay(srv.url, "instant", reqs, request_timeout_s=0.3)
        wrong = replay(srv.url, "no-such-model", reqs[:1])
        missing = replay(srv.url, "instant", [no_prompt])
    assert all(not r.ok and r.error == "timeout after 0.3 s" for r in slow)
    assert summarize(slow)["num_timeouts"] == 4
    assert wrong[0].status == 404 and "not found" in wrong[0].error
    assert "materialize" in missing[0].error
    refused = replay("http://127.0.0.1:9", "instant", reqs[:2])  # nothing listens on port 9
    assert all(r.status == 0 and r.error.startswith("ClientConnectorError") for r in refused)
    assert summarize(refused)["num_failed"] == 2


def test_multi_token_chunks_keep_one_gap_per_token():
    reqs = _trace(5, rate=float("inf"), out=7)
    with InstantServer(itl_ms=5, chunk_tokens=3) as srv:  # chunks of 3, 3, 1 tokens
        recs = replay(srv.url, "instant", reqs)
    for r in recs:
        assert r.ok and r.output_tokens == 7 and len(r.itl_s) == 6
        assert r.itl_s[0] == r.itl_s[1] == 0.0 and r.itl_s[2] >= 0.004 and r.itl_s[3] == r.itl_s[4] == 0.0


def test_client_stalls_are_measured_per_request():
    # 20 requests 20 ms apart, each streaming for ~100 ms; the client's event loop is blocked for
    # 150 ms when the 3rd completes: the requests in flight then carry the stall, the last ones
    # (sent well after it) do not.
    import time

    reqs = [Request(f"r{i}", 0.02 * i, 8, 10, prompt_token_ids=list(range(3, 11))) for i in range(20)]
    stalled_at = []

    def block(done, total, in_flight):
        if done == 3:
            stalled_at.append(time.perf_counter())
            time.sleep(0.15)

    with InstantServer(itl_ms=10) as srv:
        recs = replay(srv.url, "instant", reqs, on_progress=block)
        clean = replay(srv.url, "instant", reqs)
    assert stalled_at
    # (>= 0.12 s: the machine's own short stalls may add a little to a few requests.)
    hit = [r for r in recs if r.client_stall_s >= 0.12]
    assert 2 <= len(hit) < 20 and all(r.client_stall_s < 0.3 for r in recs)
    assert recs[-1].client_stall_s < 0.12  # sent after the stall
    assert summarize(recs)["num_client_stalled"] >= len(hit)  # a 120+ ms pause in a <= 300 ms request
    assert not any(r.client_stall_s >= 0.12 for r in clean)


def test_client_stall_counts_by_share_of_latency():
    # Pauses of the client's loop at [1.2, 1.3] and [2.5, 2.7] s; a request sent at 1.0 s with
    # TTFT 0.5 s and e2e 2.0 s had 0.1 s of its TTFT window and 0.3 s of its e2e window paused.
    from workloads.loadgen import _mark_client_stalls

    rec = RequestRecord("a", actual_send_s=1.0, ttft_s=0.5, e2e_s=2.0, status=200, output_tokens=2)
    _mark_client_stalls([rec], [(1.2, 1.3), (2.5, 2.7), (3.5, 4.0)])
    assert rec.client_stall_ttft_s == pytest.approx(0.1) and rec.client_stall_s == pytest.approx(0.3)
    assert rec.client_stall_share == pytest.approx(0.2)  # 0.1 of a 0.5 s TTFT
    # 25 ms inside a 1.5 s TTFT is not a disturbed timing; the same pause inside a 60 ms TTFT is.
    long = RequestRecord("l", ttft_s=1.5, e2e_s=2.0, client_stall_ttft_s=0.025, client_stall_s=0.025, status=200)
    short = RequestRecord("s", ttft_s=0.06, e2e_s=2.0, client_stall_ttft_s=0.025, client_stall_s=0.025, status=200)
    m = summarize([long, short])
    assert m["num_client_stalled"] == 1 and m["client_stall_share_max"] == pytest.approx(0.025 / 0.06)


def test_abort_stops_sending_and_keeps_every_record():
    """Once ``abort`` is set (the runner sets it when the server process exits), the requests not yet
    due are recorded as not sent instead of waited for; the ones already answered keep their timings."""
    import threading

    from workloads.loadgen import NOT_SENT

    reqs = _trace(40, rate=4.0)  # ~10 s of arrivals
    abort = threading.Event()
    seen = []

    def on_progress(done, total, in_flight):
        seen.append(done)
        if done >= 5:
            abort.set()

    with InstantServer() as srv:
        recs = replay(srv.url, "instant", reqs, on_progress=on_progress, abort=abort)
        received = len(_stats(srv.url)["arrivals"])
    assert len(recs) == 40
    sent = [r for r in recs if r.error != NOT_SENT]
    assert 5 <= len(sent) == received < 40
    assert all(r.ok for r in sent)
    assert all(r.status == 0 and r.ttft_s is None for r in recs if r.error == NOT_SENT)
