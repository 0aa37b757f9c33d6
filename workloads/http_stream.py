"""One request over HTTP: the ``/v1/completions`` body (with ``vllm_xargs``), the streamed response
(SSE chunks with ``return_token_ids``) and its timings, as a ``RequestRecord``; ``_Run`` holds what
the requests of one replay share (session, run clock, progress). The loops are ``workloads.loadgen``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Callable, Sequence

import aiohttp

from workloads.records import RequestRecord
from workloads.trace import Request

ProgressFn = Callable[[int, int, int], None]  # (done, total, in_flight)


def request_body(model: str, r: Request) -> dict[str, Any]:
    """The ``/v1/completions`` JSON for one request, with the policy metadata of the brief."""
    if r.prompt_token_ids is not None:
        prompt: Any = list(r.prompt_token_ids)
    elif r.prompt is not None:
        prompt = r.prompt
    else:
        raise ValueError(
            f"request {r.request_id!r} has no prompt; call workloads.prompts.materialize(requests, model_dir) first"
        )
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(r.output_len),
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    if r.priority:  # vLLM rejects non-zero priority unless the server schedules by priority
        body["priority"] = int(r.priority)
    body["vllm_xargs"] = r.vllm_xargs()
    return body


_JSON = {"Content-Type": "application/json"}


def _encode_bodies(model: str, reqs: Sequence[Request]) -> list[bytes | str]:
    """JSON bodies built before the clock starts (encoding a long prompt would delay its send); str = error."""
    out: list[bytes | str] = []
    for r in reqs:
        try:
            out.append(json.dumps(request_body(model, r), separators=(",", ":")).encode())
        except ValueError as e:
            out.append(str(e))
    return out


class _Run:
    """One load-generation run: shared session, run clock ``t0``, progress counters."""

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str, timeout_s: float,
                 on_progress: ProgressFn | None, total: int, abort: threading.Event | None = None):
        self.session, self.url, self.model = session, url, model
        self.abort = abort
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self.on_progress, self.total = on_progress, total
        self.t0 = time.perf_counter()
        self.done = self.in_flight = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def aborted(self) -> bool:
        return self.abort is not None and self.abort.is_set()

    async def send(self, r: Request, body: bytes | str, scheduled_s: float, *, warmup: bool = False,
                   sem: asyncio.Semaphore | None = None) -> RequestRecord:
        rec = RequestRecord(
            request_id=r.request_id, tenant=r.tenant, priority=r.priority, deadline_s=r.deadline_s,
            scheduled_send_s=scheduled_s, requested_output_tokens=r.output_len, prompt_tokens=r.prompt_len,
            warmup=warmup,
        )
        if isinstance(body, str):  # the body could not be built: record why, send nothing
            rec.error, rec.actual_send_s = body, self.now()
        elif sem is not None:
            async with sem:
                await self._send(body, rec)
        else:
            await self._send(body, rec)
        if not warmup:
            self.done += 1
            if self.on_progress is not None:
                self.on_progress(self.done, self.total, self.in_flight)
        return rec

    async def _send(self, body: bytes, rec: RequestRecord) -> None:
        self.in_flight += 1
        start = time.perf_counter()
        rec.actual_send_s = start - self.t0
        try:
            async with self.session.post(self.url, data=body, headers=_JSON, timeout=self.timeout) as resp:
                rec.status = resp.status
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.text())[:500]}"
                    return
                await self._read_stream(resp, rec, start)
        except asyncio.TimeoutError:
            rec.error = f"timeout after {self.timeout_s:g} s"
        except Exception as e:  # noqa: BLE001 - a broken request is a record, never a crashed run
            rec.error = f"{type(e).__name__}: {e}"
        finally:
            self.in_flight -= 1

    async def _read_stream(self, resp: aiohttp.ClientResponse, rec: RequestRecord, start: float) -> None:
        first = last = None
        streamed = 0
        usage = None
        buf = b""
        # Own line splitting: a first chunk echoing a long prompt's token ids can exceed aiohttp's line limit.
        async for chunk in resp.content.iter_any():
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                n, chunk_usage, error = _parse_chunk(data)
                if error is not None:
                    rec.error = f"stream error: {error}"
                    return
                usage = chunk_usage or usage
                if n == 0:
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                    rec.ttft_s = now - start
                else:
                    rec.itl_s.append(now - last)
                rec.itl_s.extend([0.0] * (n - 1))  # tokens delivered together in one chunk
                last = now
                streamed += n
        rec.e2e_s = time.perf_counter() - start
        if usage:
            rec.prompt_tokens = int(usage.get("prompt_tokens", rec.prompt_tokens))
            rec.output_tokens = int(usage.get("completion_tokens", streamed))
        else:
            rec.output_tokens = streamed
        if first is None and rec.output_tokens > 0:
            rec.error = "stream ended without any token chunk"


_TOKEN_IDS = b'"token_ids":['


def _parse_chunk(data: bytes) -> tuple[int, dict | None, Any]:
    """(tokens in this SSE chunk, usage or None, error or None).

    Token chunks are counted without a JSON parse: the first one echoes the whole prompt's token
    ids, and decoding that for a 100k-token prompt would stall the event loop for milliseconds.
    """
    i = data.find(_TOKEN_IDS)
    if i >= 0 and b'"usage":{' not in data:
        j = data.find(b"]", i)
        return (0 if j == i + len(_TOKEN_IDS) else data.count(b",", i, j) + 1), None, None
    obj = json.loads(data)
    if "error" in obj:
        return 0, None, obj["error"]
    n = 0
    for choice in obj.get("choices") or ():
        ids = choice.get("token_ids")
        n += len(ids) if ids is not None else (1 if choice.get("text") else 0)  # servers without token ids
    return n, obj.get("usage"), None
