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
    num_tokens_run: set[int] = field(default_factory=set)  # step token counts the server has run (warm-up included)


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
    engine = VirtualEngine(sched, trace, make_engine_request, step_model, latencies, warm_num_tokens, noise,
                           scheduling_cost)  # fmt: skip
    while engine.has_work():
        engine.add_arrivals()
        so = engine.on_cpu(sched.schedule)
        if so.num_scheduled_tokens:
            engine.run_forward_pass(so)
        else:
            engine.wait_idle()
        out = fake_model_output(sched, so, engine.tokens)
        engine.collect(so, engine.on_cpu(sched.update_from_output, so, out))
        engine.log_step()
        if on_progress is not None and engine.num_steps % progress_every_steps == 0:
            on_progress(engine.num_done, engine.n)
    engine.record_aborted()
    if on_progress is not None:
        on_progress(engine.num_done, engine.n)
    return engine.result()


class VirtualEngine:
    """The loop's state: vLLM's Scheduler, the virtual clock ``t``, the requests still to arrive (in
    the order the engine sees them, ``i`` the next), the tokens' times and the records so far."""

    def __init__(self, sched: Scheduler, trace: list[TraceRequest], make_engine_request, step_model: StepTimeModel,
                 latencies, warm_num_tokens: Iterable[int], noise, scheduling_cost: bool) -> None:  # fmt: skip
        n = self.n = len(trace)
        if latencies is None:
            latencies = ([step_model.request_latency_in_s] * n, [step_model.request_latency_out_s] * n)
        order = sorted(range(n), key=lambda j: (trace[j].arrival_s + latencies[0][j], j))
        self.engine_t = [trace[j].arrival_s + float(latencies[0][j]) for j in order]
        self.lat_out = {trace[j].request_id: float(latencies[1][j]) for j in range(n)}
        self.trace = [trace[j] for j in order]
        self.by_id = {r.request_id: r for r in self.trace}
        self.sched, self.make_engine_request, self.noise = sched, make_engine_request, noise
        self.scheduling_cost = scheduling_cost
        self.step_time = step_model.step_time
        self.arrival_cost = getattr(step_model, "arrival_s", 0.0)
        self.new_shape_cost = getattr(step_model, "new_shape_s_per_token", 0.0)
        self.seen_num_tokens = set(warm_num_tokens)
        self.tokens = token_ids(sched.vllm_config.model_config)
        self.token_times: dict[str, list[float]] = {}
        self.records: list[RequestRecord] = []
        self.log = StepLog()
        self.t = 0.0
        self.i = self.num_done = self.num_steps = self.idle_steps = 0
        self.num_preemptions = self.pc_queries = self.pc_hits = 0
        if hasattr(sched, "clock"):
            sched.clock = lambda: self.t  # the policies' now(): this loop's virtual clock (arrival_time's basis)

    def has_work(self) -> bool:
        return self.i < self.n or self.sched.has_requests()

    def add_arrivals(self) -> None:
        """Add every request that has reached the engine by ``t`` (an idle engine first jumps to the
        next arrival); one the API server would reject becomes an HTTP-400 record."""
        sched, engine_t, n = self.sched, self.engine_t, self.n
        if self.i < n and not sched.has_requests():
            self.t = max(self.t, engine_t[self.i])
        while self.i < n and engine_t[self.i] <= self.t:
            tr = self.trace[self.i]
            try:
                req = self.make_engine_request(tr, engine_t[self.i])
            except ValueError as e:  # the API server answers 400 and never enqueues it
                self.records.append(_record(tr, [], 0.0, status=400, error=str(e)))
                self.num_done += 1
            else:
                self.token_times[tr.request_id] = []
                sched.add_request(req)
            self.i += 1

    def on_cpu(self, fn, *args):
        """``fn(*args)``; with ``scheduling_cost`` its CPU time passes on the virtual clock too."""
        if not self.scheduling_cost:
            return fn(*args)
        cpu0 = time.thread_time()
        result = fn(*args)
        self.t += time.thread_time() - cpu0
        return result

    def run_forward_pass(self, so) -> None:
        """Advance the clock by the step model's time for the scheduled batch."""
        self.idle_steps = 0
        shape = BatchShape.of_step(self.sched.requests, so.num_scheduled_tokens)
        dt = self.step_time(shape.prefill_tokens, shape.decode_tokens, shape.num_reqs, shape.sum_context,
                            shape.prefill_attn)  # fmt: skip
        # The engine-state terms of simulator.step_model.cycle_time, inline (hot loop).
        if self.new_shape_cost:
            num_tokens = shape.prefill_tokens + shape.decode_tokens
            if num_tokens not in self.seen_num_tokens:
                self.seen_num_tokens.add(num_tokens)
                dt += self.new_shape_cost * num_tokens
        if self.noise is not None:
            dt *= self.noise()
        if self.arrival_cost and self.i < self.n:
            dt += self.arrival_cost * (bisect_left(self.engine_t, self.t + dt, self.i) - self.i)
        self.t += dt

    def wait_idle(self) -> None:
        """Nothing scheduled: after a few idle steps jump to the next arrival, or give up if none."""
        self.idle_steps += 1
        if self.idle_steps <= 2:
            return
        if self.i < self.n:
            self.t = max(self.t, self.engine_t[self.i])
            return
        stuck = [r.request_id for r in self.sched.requests.values() if not r.is_finished()]
        raise SimulationStuck(
            f"vLLM's Scheduler schedules nothing and no request is left to arrive; "
            f"{len(stuck)} unfinished (e.g. {stuck[:3]}): a prompt larger than the KV cache?"
        )

    def collect(self, so, engine_outputs) -> None:
        """Time-stamp the step's new tokens at ``t``, record finished requests, count prefix-cache
        queries/hits and preemptions."""
        self.num_steps += 1
        t, token_times = self.t, self.token_times
        for client_out in engine_outputs.values():
            stats = client_out.scheduler_stats
            if stats is not None and stats.prefix_cache_stats is not None:
                self.pc_queries += stats.prefix_cache_stats.queries
                self.pc_hits += stats.prefix_cache_stats.hits
            for o in client_out.outputs:
                times = token_times[o.request_id]
                for _ in o.new_token_ids:
                    times.append(t)
                if o.finish_reason is not None:
                    tr = self.by_id[o.request_id]
                    self.records.append(_record(tr, token_times.pop(o.request_id), self.lat_out[tr.request_id]))
                    self.num_done += 1
        if so.preempted_req_ids:  # the ids preempted by this schedule() call
            self.num_preemptions += len(so.preempted_req_ids)

    def log_step(self) -> None:
        running, waiting = self.sched.get_request_counts()
        log = self.log
        log.t_s.append(self.t)
        log.num_running.append(running)
        log.num_waiting.append(waiting)
        log.kv_cache_usage.append(self.sched.get_kv_cache_usage())

    def record_aborted(self) -> None:
        """Requests a policy plugin finished without output (e.g. aborted by an admission policy)."""
        for rid, times in self.token_times.items():
            self.records.append(_record(self.by_id[rid], times, self.lat_out[rid], status=200 if times else 0,
                                        error="aborted by scheduler"))  # fmt: skip

    def result(self) -> LoopResult:
        records = sorted(self.records, key=lambda rec: (rec.scheduled_send_s, rec.request_id))
        return LoopResult(records, self.log, self.num_preemptions, self.num_steps, self.pc_queries, self.pc_hits,
                          self.t, self.seen_num_tokens)  # fmt: skip


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
