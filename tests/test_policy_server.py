"""End to end: a real CPU `vllm serve` running PolicyScheduler with SJF (one server start)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest

import policies
from serving.server import VLLMServer


def complete(server, prompt, max_tokens, **extra):
    body = {"model": server.model_name, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **extra}
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def sjf_server(tiny_model_dir, tmp_path_factory):
    args = policies.vllm_args("sjf", check_invariants=True) + ["--max-num-seqs", "1"]
    srv = VLLMServer(tiny_model_dir, extra_args=args, log_path=tmp_path_factory.mktemp("srv") / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.server
def test_sjf_in_vllm_serve(sjf_server):
    log = sjf_server.log_path.read_text()
    assert re.search(r"schedlab: policy=sjf allocator=default check_invariants=True async_scheduling=(True|False)", log), log[-3000:]

    # One slot (--max-num-seqs 1): a blocker holds it while a long prompt, then a short one, queue up.
    # SJF must run the short prompt first although it arrived later.
    done: dict[str, tuple[float, dict]] = {}

    def send(name, prompt, max_tokens, delay):
        time.sleep(delay)
        out = complete(sjf_server, prompt, max_tokens, vllm_xargs={"tenant": name, "output_len_hint": max_tokens})
        done[name] = (time.monotonic(), out)

    # The blocker decodes ~1,500 tokens (seconds on this CPU), so both later requests surely queue.
    jobs = [("blocker", "warm up " * 4, 1500, 0.0), ("long", "a much longer prompt " * 40, 16, 0.3),
            ("short", "hi", 16, 0.5)]
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)

    assert set(done) == {"blocker", "long", "short"}
    for name, _, max_tokens, _ in jobs:
        out = done[name][1]
        assert out["usage"]["completion_tokens"] == max_tokens
        assert out["choices"][0]["finish_reason"] == "length" and out["choices"][0]["text"]
    # Client-side completion times: the blocker's and the short request's responses can reach the
    # client within a millisecond of each other, so only the order that SJF decides is asserted.
    assert done["short"][0] < done["long"][0]
    assert done["blocker"][0] < done["long"][0]

    metrics = urllib.request.urlopen(sjf_server.url + "/metrics", timeout=10).read().decode()
    assert re.search(r"vllm:request_success_total\{[^}]*finished_reason=\"length\"[^}]*\} [1-9]", metrics)
    assert "AllocatorInvariantError" not in sjf_server.log_path.read_text()
