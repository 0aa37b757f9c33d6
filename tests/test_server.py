"""The real CPU `vllm serve` with the tiny model: start, serve, expose metrics, stop cleanly."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from serving.models import ModelDirError
from serving.server import PortInUseError, ServerStartupTimeout, VLLMServer, group_pids


def _post(url: str, body: dict) -> urllib.request.addinfourl:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = VLLMServer(tiny_model_dir, log_path=tmp_path_factory.mktemp("srv") / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.server
def test_completions(server):
    for prompt in ("hello world", [5, 6, 7, 8, 9]):
        with _post(server.url + "/v1/completions", {"model": server.model_name, "prompt": prompt,
                                                    "max_tokens": 12, "ignore_eos": True}) as r:
            out = json.load(r)
        assert out["choices"][0]["text"]
        assert out["usage"]["completion_tokens"] == 12


@pytest.mark.server
def test_streaming_completion(server):
    body = {"model": server.model_name, "prompt": "stream this", "max_tokens": 8, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks, usage = [], None
    with _post(server.url + "/v1/completions", body) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event.get("usage"):
                usage = event["usage"]
            chunks += [c["text"] for c in event["choices"] if c.get("text")]
    assert len(chunks) >= 2  # tokens arrive incrementally
    assert usage["completion_tokens"] == 8


@pytest.mark.server
def test_metrics_exposed(server):
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    assert "vllm:num_preemptions_total" in text
    assert "vllm:time_to_first_token_seconds" in text


@pytest.mark.server
def test_port_in_use_is_refused(server):
    with pytest.raises(PortInUseError, match=str(server.port)):
        VLLMServer(server.model_dir, port=server.port)


def test_model_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelDirError, match=str(tmp_path)):
        VLLMServer(tmp_path)


def test_startup_timeout_is_reported_and_cleaned_up(tiny_model_dir, tmp_path):
    srv = VLLMServer(tiny_model_dir, startup_timeout_s=2, log_path=tmp_path / "server.log")
    with pytest.raises(ServerStartupTimeout, match="not healthy after 2 s"):
        srv.start()
    assert group_pids(srv.pid) == []


def test_port_in_use_at_start(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortInUseError, match=str(s.getsockname()[1])):
            VLLMServer(tiny_model_dir, port=s.getsockname()[1])


@pytest.mark.server
def test_stop_leaves_no_process(tiny_model_dir, tmp_path):
    """Its own server: the shared one must stay up whatever order the tests run in."""
    srv = VLLMServer(tiny_model_dir, log_path=tmp_path / "server.log")
    try:
        srv.start()
        pgid = srv.pid
        assert len(group_pids(pgid)) >= 2  # API server + engine core (+ worker)
    finally:
        srv.stop()
    assert group_pids(pgid) == []
    assert not srv.is_alive()
