"""HTTP load generator for vLLM's OpenAI ``/v1/completions`` (asyncio + aiohttp).

Open loop (default): each request is sent at its trace time, never waiting for earlier responses
(optionally capped at ``max_concurrency`` in-flight; a capped request is sent late and its send
lag shows it). Closed loop: ``closed_loop_users`` users each send their next request as soon as
their previous one finished. Responses are streamed with ``ignore_eos`` and ``max_tokens`` so
output lengths follow the trace; ``return_token_ids`` tells how many tokens each chunk carries.
Errors and timeouts become records with ``error`` set; they never stop the run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import aiohttp

from workloads.records import RequestRecord
from workloads.trace import Request

ProgressFn = Callable[[int, int, int], None]  # (done, total, in_flight)
# A stretch this long without the event loop running is a client stall (RequestRecord.client_stall_s).
CLIENT_STALL_S = 0.02
# Once a replay is aborted (the server died), the requests not yet sent get this error.
NOT_SENT = "not sent: the replay was stopped"
ABORT_POLL_S = 0.1  # how often the open loop looks at the abort flag while waiting for a send time


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
    """JSON bodies built before the clock starts (a long prompt takes ~1 ms to encode); str = error."""
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


def _warmup_copy(r: Request, i: int) -> Request:
    # Reversed prompt: same length, but no prefix-cache hits shared with the measured requests.
    ids = None if r.prompt_token_ids is None else list(reversed(r.prompt_token_ids))
    text = None if r.prompt is None else r.prompt[::-1]
    return replace(r, request_id=f"warmup-{i}", prompt_token_ids=ids, prompt=text)


def warmup_copies(requests: Sequence[Request]) -> list[Request]:
    """The workload again with reversed prompts: the same arrivals and lengths, so the server runs
    the same batch shapes, without prefix-cache hits shared with the measured requests."""
    return [_warmup_copy(r, i) for i, r in enumerate(requests)]


def _connector(max_concurrency: int | None, closed_loop_users: int | None) -> aiohttp.TCPConnector:
    limit = closed_loop_users or max_concurrency or 0  # 0 = unlimited (open loop)
    return aiohttp.TCPConnector(limit=limit, ttl_dns_cache=None, keepalive_timeout=60)


async def run_load(
    base_url: str,
    model: str,
    requests: Sequence[Request],
    *,
    max_concurrency: int | None = None,
    closed_loop_users: int | None = None,
    warmup: int = 0,
    request_timeout_s: float = 600.0,
    on_progress: ProgressFn | None = None,
    session: aiohttp.ClientSession | None = None,
    on_measure_start: Callable[[], Any] | None = None,
    abort: threading.Event | None = None,
) -> list[RequestRecord]:
    """Replay ``requests`` against ``base_url`` and return warm-up records then measured ones.

    ``warmup`` requests (copies of the first ones, with reversed prompts) are sent and awaited
    before the clock starts. ``on_measure_start`` (sync or async) runs right before the measured
    part, e.g. to scrape ``/metrics``. Once ``abort`` is set (any thread; e.g. the server died) no
    further request is sent: each unsent one gets a record with ``error`` = ``NOT_SENT``.
    """
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    if closed_loop_users is not None and closed_loop_users < 1:
        raise ValueError(f"closed_loop_users must be >= 1, got {closed_loop_users}")
    reqs = sorted(requests, key=lambda r: r.arrival_s)
    own = session is None
    if own:
        session = aiohttp.ClientSession(
            connector=_connector(max_concurrency, closed_loop_users), read_bufsize=1 << 20
        )
    try:
        run = _Run(session, base_url.rstrip("/") + "/v1/completions", model, request_timeout_s,
                   on_progress, len(reqs), abort)
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        warm_reqs = [_warmup_copy(r, i) for i, r in enumerate(reqs[:warmup])]
        warm = await asyncio.gather(
            *(run.send(r, b, 0.0, warmup=True, sem=sem) for r, b in zip(warm_reqs, _encode_bodies(model, warm_reqs)))
        )
        bodies = _encode_bodies(model, reqs)
        if on_measure_start is not None:
            res = on_measure_start()
            if asyncio.iscoroutine(res):
                await res
        if on_progress is not None:
            on_progress(0, len(reqs), 0)
        # A materialized trace holds millions of token ids in lists; a full GC pass over them would
        # stall the event loop for tens of ms mid-run. Freeze what exists now out of the collector.
        gc.collect()
        gc.freeze()
        run.t0 = time.perf_counter()
        stalls: list[tuple[float, float]] = []
        watch = asyncio.create_task(_watch_loop(run, stalls))
        try:
            if closed_loop_users:
                records = await _closed_loop(run, reqs, bodies, closed_loop_users)
            else:
                records = await _open_loop(run, reqs, bodies, sem)
        finally:
            watch.cancel()
        _mark_client_stalls(records, stalls)
        return list(warm) + records
    finally:
        gc.unfreeze()
        if own:
            await session.close()


async def _watch_loop(run: _Run, stalls: list[tuple[float, float]], period_s: float = 0.002) -> None:
    """Append (start, end) of every stretch of more than ``CLIENT_STALL_S`` in which this event
    loop did not run. On a shared machine the client itself stalls (measured on the 2-core dev VM:
    30-250 ms pauses of every process but the busy server, a few per minute under load); the
    tokens that arrive meanwhile are timed late, and the TTFT tail then measures the machine."""
    last = run.now()
    while True:
        await asyncio.sleep(period_s)
        now = run.now()
        if now - last > period_s + CLIENT_STALL_S:
            stalls.append((last + period_s, now))
        last = now


def _mark_client_stalls(records: list[RequestRecord], stalls: list[tuple[float, float]]) -> None:
    for rec in records:
        if stalls and rec.e2e_s is not None:
            a, b = rec.actual_send_s, rec.actual_send_s + rec.e2e_s
            rec.client_stall_s = sum(max(0.0, min(b, e) - max(a, s)) for s, e in stalls)


async def _open_loop(
    run: _Run, reqs: list[Request], bodies: list[bytes | str], sem: asyncio.Semaphore | None
) -> list[RequestRecord]:
    base = reqs[0].arrival_s if reqs else 0.0
    tasks = []
    for r, body in zip(reqs, bodies):
        scheduled = r.arrival_s - base
        # uvloop timers have millisecond resolution and may fire early: re-check, never send early
        while (delay := scheduled - run.now()) > 0 and not run.aborted():
            await asyncio.sleep(min(delay, ABORT_POLL_S))
        if run.aborted():
            body = NOT_SENT
        tasks.append(asyncio.create_task(run.send(r, body, scheduled, sem=sem)))
    return list(await asyncio.gather(*tasks))


async def _closed_loop(run: _Run, reqs: list[Request], bodies: list[bytes | str], users: int) -> list[RequestRecord]:
    out: list[RequestRecord | None] = [None] * len(reqs)
    next_i = 0

    async def user() -> None:
        nonlocal next_i
        while next_i < len(reqs):
            i = next_i
            next_i += 1
            body = NOT_SENT if run.aborted() else bodies[i]
            out[i] = await run.send(reqs[i], body, run.now())  # due as soon as the user is free

    await asyncio.gather(*(user() for _ in range(users)))
    return out  # type: ignore[return-value]


def _run_async(coro):
    try:
        import uvloop  # ships with vLLM; lower per-request overhead than the default loop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def replay(
    base_url: str,
    model: str,
    requests: Sequence[Request],
    *,
    max_concurrency: int | None = None,
    closed_loop_users: int | None = None,
    warmup: int = 0,
    request_timeout_s: float = 600.0,
    on_progress: ProgressFn | None = None,
    abort: threading.Event | None = None,
) -> list[RequestRecord]:
    """Synchronous ``run_load``: replay ``requests`` against a server and return the records."""
    return _run_async(
        run_load(base_url, model, requests, max_concurrency=max_concurrency,
                 closed_loop_users=closed_loop_users, warmup=warmup,
                 request_timeout_s=request_timeout_s, on_progress=on_progress, abort=abort)
    )


@dataclass
class LoadResult:
    """A replay together with the server's ``/metrics`` before/after and sampled over time."""

    records: list[RequestRecord]
    server_before: dict[str, float]
    server_after: dict[str, float]
    samples: Any  # pandas.DataFrame: t_s, num_running, num_waiting, kv_cache_usage


async def run_load_with_server_metrics(
    base_url: str, model: str, requests: Sequence[Request], *, sample_interval_s: float = 0.5, **kw: Any
) -> LoadResult:
    """``run_load`` while sampling the server's ``/metrics`` every ``sample_interval_s``."""
    from workloads.server_metrics import sample_server, scrape_async

    async with aiohttp.ClientSession() as metrics_session:
        state: dict[str, Any] = {}
        stop = asyncio.Event()

        async def measure_start() -> None:
            state["before"] = await scrape_async(base_url, metrics_session)
            state["sampler"] = asyncio.create_task(
                sample_server(base_url, stop, interval_s=sample_interval_s, session=metrics_session)
            )

        try:
            records = await run_load(base_url, model, requests, on_measure_start=measure_start, **kw)
        finally:
            stop.set()
        if "sampler" not in state:
            raise RuntimeError("the run failed before /metrics sampling started")
        samples = await state["sampler"]
        try:  # a server that died at the end of the replay: its records still count
            after = await scrape_async(base_url, metrics_session)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            after = {}
    return LoadResult(records, state["before"], after, samples)


def replay_with_server_metrics(
    base_url: str, model: str, requests: Sequence[Request], *, sample_interval_s: float = 0.5, **kw: Any
) -> LoadResult:
    """Synchronous ``run_load_with_server_metrics`` (same keyword options as ``replay``)."""
    return _run_async(
        run_load_with_server_metrics(base_url, model, requests, sample_interval_s=sample_interval_s, **kw)
    )
