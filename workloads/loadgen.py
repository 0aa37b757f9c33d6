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
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import aiohttp

from workloads.http_stream import ProgressFn, _encode_bodies, _Run
from workloads.records import RequestRecord
from workloads.trace import Request

# A stretch this long without the event loop running is a client stall (RequestRecord.client_stall_s).
CLIENT_STALL_S = 0.02
# Once a replay is aborted (the server died), the requests not yet sent get this error.
NOT_SENT = "not sent: the replay was stopped"
ABORT_POLL_S = 0.1  # how often the open loop looks at the abort flag while waiting for a send time


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
        records = await _measure(run, reqs, bodies, sem, closed_loop_users)
        return list(warm) + records
    finally:
        gc.unfreeze()
        if own:
            await session.close()


async def _measure(run: _Run, reqs: list[Request], bodies: list[bytes | str], sem: asyncio.Semaphore | None,
                   closed_loop_users: int | None) -> list[RequestRecord]:  # fmt: skip
    """The measured replay, on a clock started now, with the client's own stalls marked per request."""
    # A materialized trace holds millions of token ids in lists; a full GC pass over them would
    # stall the event loop for tens of ms mid-run. Freeze what exists now out of the collector
    # (run_load unfreezes it).
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
    return records


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


def _overlap(a: float, b: float, stalls: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in stalls)


def _mark_client_stalls(records: list[RequestRecord], stalls: list[tuple[float, float]]) -> None:
    for rec in records:
        if stalls and rec.e2e_s is not None:
            rec.client_stall_s = _overlap(rec.actual_send_s, rec.actual_send_s + rec.e2e_s, stalls)
        if stalls and rec.ttft_s is not None:
            rec.client_stall_ttft_s = _overlap(rec.actual_send_s, rec.actual_send_s + rec.ttft_s, stalls)


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
