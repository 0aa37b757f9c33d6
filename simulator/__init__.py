"""Fast simulation backend: vLLM 0.32's real Scheduler on a virtual clock.

``simulate`` builds the same Scheduler (policy plugin included), KVCacheManager and BlockPool the
real server builds, replays a workload through it, and replaces only the model's forward pass by
a step-time model (``simulator.step_model``). Its per-request records and summary metrics have the
same names as the real load generator's, so MLflow, plots and comparison tables work unchanged.

    from simulator import simulate, load_step_model
    res = simulate(requests, model_dir=write_model_dir("llama3_8b"), policy="sjf",
                   step_model=load_step_model("roofline:h100"), engine=EngineLimits(max_num_seqs=64))
    res.summary["ttft_ms_p50"], res.timeseries, res.num_preemptions
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pandas as pd

from simulator.linear import LinearModel
from simulator.load import load_step_model
from simulator.noise import request_latencies, step_noise
from simulator.roofline import HARDWARE, Hardware, RooflineModel
from simulator.step_model import BatchShape, StepTimeModel
from serving.engine import EngineLimits
from workloads.records import RequestRecord
from workloads.trace import Request as TraceRequest

if TYPE_CHECKING:
    from simulator.engine import LoopResult

__all__ = [
    "simulate", "SimResult", "EngineLimits", "load_step_model", "StepTimeModel", "RooflineModel", "LinearModel",
    "Hardware", "HARDWARE", "BatchShape",
]  # fmt: skip


@dataclass
class SimResult:
    records: list[RequestRecord]
    summary: dict[str, float]
    timeseries: pd.DataFrame  # columns t_s, num_running, num_waiting, kv_cache_usage (one row per step)
    num_preemptions: int
    wall_s: float
    num_steps: int = 0
    sim_duration_s: float = 0.0  # virtual time from the first arrival to the last token


def simulate(
    requests: list[TraceRequest],
    *,
    model_dir: str | Path,
    policy: str = "fcfs",
    policy_args: dict[str, Any] | None = None,
    allocator: str = "default",
    allocator_args: dict[str, Any] | None = None,
    step_model: StepTimeModel | str | dict,
    engine: EngineLimits | None = None,
    seed: int = 0,
    warm_num_tokens: Iterable[int] = (),
    warmup_replay: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    scheduling_cost: bool = False,
) -> SimResult:
    """Replay ``requests`` through vLLM's real Scheduler with ``policy``/``allocator`` under the
    ``engine`` limits (the same object that gives a real server its flags).

    ``engine.num_gpu_blocks=None`` derives the KV cache size like vLLM: from the roofline hardware's
    memory (memory × utilization − weights − activations) / bytes per block, or from the
    ``num_gpu_blocks`` a calibrated linear profile recorded from its server;
    ``engine.max_model_len=None`` is the model's ``max_position_embeddings``.

    ``enable_chunked_prefill`` / ``long_prefill_token_threshold`` are vLLM's own prefill knobs
    (``--enable-chunked-prefill``, ``--long-prefill-token-threshold``): without chunking a prompt
    is prefilled in one step (``max_num_batched_tokens`` must then cover ``max_model_len``); the
    threshold caps the tokens one request prefills per step (Sarathi-Serve's chunk size).

    ``warm_num_tokens``: step token counts the simulated server has already run, for a profile
    with a first-run cost per shape (``LinearModel.c6``, vLLM's CPU backend); by default the server
    is as freshly started. ``warmup_replay=True`` first replays the workload once on a fresh
    scheduler and carries the token counts it ran into the measured replay, as a real cell's
    warm-up replay does (``backend.warmup_replay``); it costs a second simulation only for such a
    profile.

    ``scheduling_cost=True`` adds the measured CPU time of each ``schedule()`` +
    ``update_from_output()`` (policy and allocator included) to the simulated step, so an expensive
    plugin shows up in latency; off by default because it makes results depend on this machine.

    ``seed`` picks the prompts' token ids and, for a calibrated profile, each request's front-end
    latencies and the steps' noise (``step_model.StepNoise``): same seed, same result.
    """
    from policies.inprocess import token_ids
    from serving.models import load_model_config
    from simulator.build import build_scheduler, engine_request_factory, materialize_prompts
    from simulator.engine import run_loop

    start = time.perf_counter()
    engine = engine or EngineLimits()
    model_cfg = load_model_config(model_dir)
    step_model = load_step_model(step_model)
    if isinstance(step_model, RooflineModel):
        step_model.bind_model(model_cfg)
    block_size = engine.block_size
    num_gpu_blocks = engine.num_gpu_blocks
    if num_gpu_blocks is None:
        num_gpu_blocks = _default_num_blocks(step_model, block_size)
    max_model_len = engine.max_model_len
    if max_model_len is None:
        max_model_len = int(model_cfg.get("max_position_embeddings", 4096))

    trace = sorted(materialize_prompts(requests, model_dir, seed=seed), key=lambda r: r.arrival_s)
    def new_scheduler():
        return build_scheduler(
            model_dir, policy=policy, policy_args=policy_args, allocator=allocator,
            allocator_args=allocator_args, block_size=block_size, num_blocks=num_gpu_blocks,
            max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens,
            max_model_len=max_model_len, enable_prefix_caching=engine.enable_prefix_caching,
            enable_chunked_prefill=engine.enable_chunked_prefill,
            long_prefill_token_threshold=engine.long_prefill_token_threshold,
        )  # fmt: skip

    sched = new_scheduler()
    make_req = engine_request_factory(block_size=block_size, max_model_len=max_model_len,
                                      eos_token_id=token_ids(sched.vllm_config.model_config).eos)
    latencies = request_latencies(step_model, len(trace), seed)
    if warmup_replay and getattr(step_model, "new_shape_s_per_token", 0.0):
        warm = run_loop(new_scheduler(), trace, make_req, step_model, latencies=latencies,
                        warm_num_tokens=warm_num_tokens, noise=step_noise(step_model, seed))
        warm_num_tokens = warm.num_tokens_run
    loop = run_loop(sched, trace, make_req, step_model, latencies=latencies, warm_num_tokens=warm_num_tokens,
                    noise=step_noise(step_model, seed), on_progress=on_progress, scheduling_cost=scheduling_cost)
    return _sim_result(loop, trace[0].arrival_s if trace else 0.0, start)


def _sim_result(loop: "LoopResult", first_arrival_s: float, start: float) -> SimResult:
    """The loop's records, the summary under the real load generator's names, the step time series
    (``start``: ``perf_counter()`` when ``simulate`` began)."""
    from simulator.summary import summarize_sim

    ts = pd.DataFrame(
        {
            "t_s": loop.steps.t_s,
            "num_running": loop.steps.num_running,
            "num_waiting": loop.steps.num_waiting,
            "kv_cache_usage": loop.steps.kv_cache_usage,
        }
    )
    summary = summarize_sim(loop, ts)
    return SimResult(
        records=loop.records,
        summary=summary,
        timeseries=ts,
        num_preemptions=loop.num_preemptions,
        wall_s=time.perf_counter() - start,
        num_steps=loop.num_steps,
        sim_duration_s=loop.end_t_s - first_arrival_s,
    )


def _default_num_blocks(step_model: StepTimeModel, block_size: int) -> int:
    if isinstance(step_model, RooflineModel):
        return step_model.num_gpu_blocks(block_size)
    blocks = getattr(step_model, "num_gpu_blocks", None)
    if blocks:
        # The profile counts blocks of its own block size; keep the same KV token capacity.
        return int(blocks * getattr(step_model, "block_size", block_size) // block_size)
    raise ValueError(
        f"step model {step_model.name!r} does not know the KV cache size; pass num_gpu_blocks=..."
    )
