"""A minimal streaming ``/v1/completions`` server that answers instantly (aiohttp).

It speaks the subset of vLLM's OpenAI protocol the load generator uses (SSE chunks with
``token_ids``, a usage chunk, ``[DONE]``), so the load generator's own overhead can be measured
(benchmarks/loadgen.py) and its mechanics tested without a model. Optional ``ttft_ms``/``itl_ms``
delays shape the stream. ``GET /stats`` returns the server-side arrival times and the received
request bodies (prompts dropped); ``POST /reset`` clears them.

    python -m workloads.instant_server --port 8123 [--ttft-ms 0 --itl-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

from aiohttp import web

MODEL = "instant"


def make_app(model: str = MODEL, ttft_ms: float = 0.0, itl_ms: float = 0.0, chunk_tokens: int = 1) -> web.Application:
    """``chunk_tokens`` > 1 sends several tokens per SSE chunk, as vLLM does when its client lags."""
    arrivals: list[float] = []
    bodies: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.perf_counter())
        body = await request.json()
        if body.get("model") != model:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}}, status=404)
        prompt, n = body.get("prompt"), body.get("max_tokens")
        if not isinstance(n, int) or n < 1 or not prompt:
            return web.json_response({"error": {"message": "need prompt and max_tokens >= 1"}}, status=400)
        bodies.append({k: v for k, v in body.items() if k != "prompt"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()  # as vLLM's uvicorn does; else every response closes its connection
        await resp.prepare(request)
        head = {"id": "cmpl-0", "object": "text_completion", "model": model}
        for i in range(0, n, chunk_tokens):
            delay = ttft_ms if i == 0 else itl_ms
            if delay:
                await asyncio.sleep(delay / 1e3)
            k = min(chunk_tokens, n - i)
            choice = {"index": 0, "text": " x" * k, "token_ids": [5] * k,
                      "finish_reason": "length" if i + k == n else None}
            await resp.write(b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n")
        plen = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        usage = {"prompt_tokens": plen, "completion_tokens": n, "total_tokens": plen + n}
        await resp.write(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, "bodies": bodies})

    async def reset(_: web.Request) -> web.Response:
        arrivals.clear()
        bodies.clear()
        return web.json_response({})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions), web.get("/stats", stats),
                    web.post("/reset", reset), web.get("/v1/models", models),
                    web.get("/health", health)])
    return app


class InstantServer:
    """Run ``make_app`` on 127.0.0.1 in a background thread (for tests): ``with InstantServer() as s: s.url``."""

    def __init__(self, **app_kw):
        self.app_kw, self.url = app_kw, ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "InstantServer":
        self._thread.start()
        self._runner = web.AppRunner(make_app(**self.app_kw), access_log=None)
        asyncio.run_coroutine_threadsafe(self._runner.setup(), self._loop).result()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self._loop).result()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.model, args.ttft_ms, args.itl_ms), host="127.0.0.1", port=args.port,
                access_log=None, print=None)
