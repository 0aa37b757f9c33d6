"""Drive an in-process vLLM Scheduler without a model: every scheduled request that reaches the end
of its tokens "samples" one token. Used by the tests, the overhead benchmark, the simulator and the
docs."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.engine import EngineCoreEventType
from vllm.v1.outputs import ModelRunnerOutput

from policies.inprocess import TokenIds, token_ids


def fake_model_output(sched, so: SchedulerOutput, tokens: TokenIds | None = None) -> ModelRunnerOutput:
    """The forward pass, faked: each scheduled request whose tokens are all computed after this step
    (no partial prefill chunk) samples one token, the model's EOS when it is the request's last
    (``max_tokens``-th) output, else an ordinary token. ``tokens``: default from ``sched``'s model."""
    tokens = tokens or token_ids(sched.vllm_config.model_config)
    ids = list(so.num_scheduled_tokens)
    reqs = sched.requests
    sampled = []
    for rid in ids:
        r = reqs[rid]
        if r.is_prefill_chunk:  # vLLM sets it in schedule(), once the computed tokens advanced
            sampled.append([])
        else:
            last = len(r._output_token_ids) + 1 >= r.max_tokens
            sampled.append([tokens.eos if last and tokens.eos is not None else tokens.ordinary])
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled)


@dataclass
class SchedulerEvents:
    """What happened, step by step: admissions (new or resumed), preemptions (as the step's
    SchedulerOutput reports them), vLLM's PREEMPTED engine events (the source of the
    ``vllm:num_preemptions`` metric; delivered with the request's next output), finishes."""

    admitted: list[str] = field(default_factory=list)
    admitted_per_step: list[list[str]] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    preemption_events: int = 0
    finished: list[str] = field(default_factory=list)
    steps: int = 0


def step(sched, events: SchedulerEvents | None = None) -> SchedulerOutput:
    so = sched.schedule()
    engine_outputs = sched.update_from_output(so, fake_model_output(sched, so))
    if events is not None:
        new = [r.req_id for r in so.scheduled_new_reqs] + sorted(so.scheduled_cached_reqs.resumed_req_ids)
        events.admitted += new
        events.admitted_per_step.append(new)
        events.preempted += sorted(so.preempted_req_ids or ())
        for eco in engine_outputs.values():
            for out in eco.outputs:
                events.preemption_events += sum(e.type == EngineCoreEventType.PREEMPTED for e in out.events or ())
                if out.finish_reason is not None:
                    events.finished.append(out.request_id)
        events.steps += 1
    return so


def run(sched, requests=(), max_steps: int = 100_000) -> SchedulerEvents:
    """Add ``requests`` and step until the scheduler is empty."""
    for r in requests:
        sched.add_request(r)
    events = SchedulerEvents()
    while sched.has_requests():
        if events.steps >= max_steps:
            raise RuntimeError(f"scheduler not drained after {max_steps} steps")
        step(sched, events)
    return events
