"""The discrete-event loop: vLLM's real Scheduler on a virtual clock.

One iteration = one engine step, as in ``vllm.v1.engine.core.EngineCore.step``: add the requests
that have arrived, ``schedule()``, run the "model" (advance the clock by the step-time model's
duration for what was scheduled), ``update_from_output()``. Only the forward pass is simulated;
admission, chunked prefill, preemption, prefix caching and block allocation are vLLM's own code
(plus the policy plugin, when the scheduler class is ``policies.PolicyScheduler``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from vllm.v1.core.sched.scheduler import Scheduler

from policies.driver import fake_model_output
from policies.inprocess import token_ids
from workloads.records import RequestRecord
from workloads.trace import Request as TraceRequest

from simulator.step_model import BatchShape, StepTimeModel


class SimulationStuck(RuntimeError):
    """The Scheduler can make no progress and no request will arrive to change that."""


@dataclass
class StepLog:
    """Per-step state, sampled after each ``update_from_output`` (columns of the time series)."""

    t_s: list[float] = field(default_factory=list)
    num_running: list[int] = field(default_factory=list)
    num_waiting: list[int] = field(default_factory=list)
    kv_cache_usage: list[float] = field(default_factory=list)


@dataclass
class LoopResult:
    records: list[RequestRecord]
    steps: StepLog
    num_preemptions: int
    num_steps: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    end_t_s: float


def run_loop(
    sched: Scheduler,
    trace: list[TraceRequest],
    make_engine_request: Callable[[TraceRequest, float], object],
    step_model: StepTimeModel,
    *,
    latencies: tuple[Sequence[float], Sequence[float]] | None = None,
    warm_num_tokens: Iterable[int] = (),
    noise: Callable[[], float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    progress_every_steps: int = 2000,
    scheduling_cost: bool = False,
) -> LoopResult:
    """Replay ``trace`` through ``sched``; return one record per request.

    ``latencies`` = per-request (client → engine, engine → client) front-end delays, aligned with
    ``trace`` (default: the step model's constants). ``warm_num_tokens``: step token counts the
    engine has already run (for a step model with a first-run cost per shape; default: none, a
    freshly started server). ``noise()``: a multiplier per busy step (``step_model.StepNoise``).

    ``make_engine_request(trace_request, engine_arrival_s)`` builds the vLLM ``Request``, or
    raises ``ValueError`` for a request the server would reject (recorded as HTTP 400).

    ``scheduling_cost``: add the CPU time this thread measures in ``schedule()`` and
    ``update_from_output()`` to the step, where a synchronous engine waits for them (schedule, then
    the forward pass, then the output update); results then depend on this machine's speed.
    """
    n = len(trace)
    if latencies is None:
        latencies = ([step_model.request_latency_in_s] * n, [step_model.request_latency_out_s] * n)
    # Engine-side arrivals, in the order the engine sees them.
    order = sorted(range(n), key=lambda j: (trace[j].arrival_s + latencies[0][j], j))
    engine_t = [trace[j].arrival_s + float(latencies[0][j]) for j in order]
    lat_out = {trace[j].request_id: float(latencies[1][j]) for j in range(n)}
    trace = [trace[j] for j in order]
    step_time = step_model.step_time
    arrival_cost = getattr(step_model, "arrival_s", 0.0)
    new_shape_cost = getattr(step_model, "new_shape_s_per_token", 0.0)
    seen_num_tokens = set(warm_num_tokens)
    by_id = {r.request_id: r for r in trace}
    token_times: dict[str, list[float]] = {}
    records: list[RequestRecord] = []
    num_preemptions = 0
    pc_queries = pc_hits = 0
    log = StepLog()
    log_t, log_run, log_wait, log_kv = log.t_s, log.num_running, log.num_waiting, log.kv_cache_usage
    engine_requests = sched.requests
    tokens = token_ids(sched.vllm_config.model_config)
    waiting_counts = sched.get_request_counts
    kv_usage = sched.get_kv_cache_usage

    t = 0.0
    if hasattr(sched, "clock"):
        sched.clock = lambda: t  # the policies' now(): this loop's virtual clock (arrival_time's basis)
    i = 0
    num_done = 0
    num_steps = 0
    idle_steps = 0
    while i < n or sched.has_requests():
        if i < n and not sched.has_requests():
            t = max(t, engine_t[i])  # idle engine: jump to the next arrival
        while i < n and engine_t[i] <= t:
            tr = trace[i]
            try:
                req = make_engine_request(tr, engine_t[i])
            except ValueError as e:  # the API server answers 400 and never enqueues it
                i += 1
                records.append(_record(tr, [], 0.0, status=400, error=str(e)))
                num_done += 1
                continue
            i += 1
            token_times[tr.request_id] = []
            sched.add_request(req)

        if scheduling_cost:
            cpu0 = time.thread_time()
            so = sched.schedule()
            t += time.thread_time() - cpu0
        else:
            so = sched.schedule()
        scheduled = so.num_scheduled_tokens
        req_ids = list(scheduled)
        if req_ids:
            idle_steps = 0
            shape = BatchShape.of_step(engine_requests, scheduled)
            dt = step_time(shape.prefill_tokens, shape.decode_tokens, shape.num_reqs, shape.sum_context, shape.prefill_attn)
            # The engine-state terms of simulator.step_model.cycle_time, inline (hot loop).
            if new_shape_cost:
                num_tokens = shape.prefill_tokens + shape.decode_tokens
                if num_tokens not in seen_num_tokens:
                    seen_num_tokens.add(num_tokens)
                    dt += new_shape_cost * num_tokens
            if noise is not None:
                dt *= noise()
            if arrival_cost and i < n:
                dt += arrival_cost * (bisect_left(engine_t, t + dt, i) - i)
            t += dt
        else:
            idle_steps += 1
            if idle_steps > 2:
                if i < n:
                    t = max(t, engine_t[i])
                else:
                    stuck = [r.request_id for r in engine_requests.values() if not r.is_finished()]
                    raise SimulationStuck(
                        f"vLLM's Scheduler schedules nothing and no request is left to arrive; "
                        f"{len(stuck)} unfinished (e.g. {stuck[:3]}): a prompt larger than the KV cache?"
                    )
        out = fake_model_output(sched, so, tokens)
        num_steps += 1

        if scheduling_cost:
            cpu0 = time.thread_time()
            engine_outputs = sched.update_from_output(so, out)
            t += time.thread_time() - cpu0  # the outputs leave the engine after the update
        else:
            engine_outputs = sched.update_from_output(so, out)
        for client_out in engine_outputs.values():
            stats = client_out.scheduler_stats
            if stats is not None and stats.prefix_cache_stats is not None:
                pc_queries += stats.prefix_cache_stats.queries
                pc_hits += stats.prefix_cache_stats.hits
            for o in client_out.outputs:
                times = token_times[o.request_id]
                for _ in o.new_token_ids:
                    times.append(t)
                if o.finish_reason is not None:
                    tr = by_id[o.request_id]
                    records.append(_record(tr, token_times.pop(o.request_id), lat_out[tr.request_id]))
                    num_done += 1
        if so.preempted_req_ids:  # the ids preempted by this schedule() call
            num_preemptions += len(so.preempted_req_ids)

        running, waiting = waiting_counts()
        log_t.append(t)
        log_run.append(running)
        log_wait.append(waiting)
        log_kv.append(kv_usage())
        if on_progress is not None and num_steps % progress_every_steps == 0:
            on_progress(num_done, n)

    # Requests a policy plugin finished without output (e.g. aborted by an admission policy).
    for rid, times in token_times.items():
        records.append(_record(by_id[rid], times, lat_out[rid], status=200 if times else 0, error="aborted by scheduler"))
    if on_progress is not None:
        on_progress(num_done, n)
    records.sort(key=lambda rec: (rec.scheduled_send_s, rec.request_id))
    return LoopResult(records, log, num_preemptions, num_steps, pc_queries, pc_hits, t)


def _record(tr: TraceRequest, times: list[float], lat_out: float, *, status: int = 200,
            error: str | None = None) -> RequestRecord:  # fmt: skip
    rec = RequestRecord(
        request_id=tr.request_id,
        tenant=tr.tenant,
        priority=tr.priority,
        deadline_s=tr.deadline_s,
        scheduled_send_s=tr.arrival_s,
        actual_send_s=tr.arrival_s,
        prompt_tokens=tr.prompt_len,
        output_tokens=len(times),
        requested_output_tokens=tr.output_len,
        status=status,
        error=error,
    )
    if times:
        rec.ttft_s = times[0] + lat_out - tr.arrival_s
        rec.e2e_s = times[-1] + lat_out - tr.arrival_s
        rec.itl_s = [b - a for a, b in zip(times, times[1:])]
    return rec
