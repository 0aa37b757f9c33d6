"""Sim-vs-real fidelity on the CPU tiny model (shared by the test and ``benchmarks/sim_fidelity.py``).

One real-server start: calibrate on the sweep (``simulator.calibrate``), then replay a held-out
workload — different arrival process, lengths and seed than anything in the sweep — on the same
server: once to warm it up, then ``HELDOUT_REPLAYS`` times (fresh prompts each time). The real
metrics pool those replays (percentiles over all their requests, throughput over their summed
durations): on a shared 2-core machine one replay's step times drift with the machine's speed
over seconds (docs/simulator.md, "Fidelity"), which a single short replay cannot tell from a model
error. The
simulator replays the same workload ``SIM_RUNS`` times (one seed each: front-end latencies and
step noise) with the fitted profile and the engine limits the server reported, pooled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads.trace import Request

# Engine limits for both the server and the sim; 40 KV blocks (of the CPU backend's 128 tokens)
# put the held-out workload under KV pressure, so preemptions are compared too.
SERVER_ARGS = ("--max-num-seqs", "32", "--max-num-batched-tokens", "1024", "--num-gpu-blocks-override", "40")
METRICS = ("output_token_throughput", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50", "server_num_preemptions")
HELDOUT_REPLAYS = 5
# Simulated runs pooled (one seed each: front-end latency draws and step noise). A sim run is
# cheap, so many runs make the sim side of the comparison its expected value.
SIM_RUNS = 12


def heldout_workload(num_requests: int = 80, rate: float = 24.0, seed: int = 1) -> list[Request]:
    from workloads.synthetic import synthetic

    return list(synthetic(num_requests, rate, prompt_len="uniform:64:512", output_len="uniform:16:128", seed=seed))


def heldout_replays(replays: int = HELDOUT_REPLAYS, **kwargs: Any) -> list[list[Request]]:
    """1 + ``replays`` copies of the held-out workload with their own request ids (and so their
    own prompts once materialized: no prefix-cache hits across copies); the first warms up."""
    import dataclasses

    base = heldout_workload(**kwargs)
    return [[dataclasses.replace(r, request_id=f"h{k}-{r.request_id}") for r in base] for k in range(replays + 1)]


def pooled_summary(record_lists: list[list], preemptions: list[float] | None = None) -> dict[str, float]:
    """``summarize`` over the records of several replays of one workload: latency percentiles
    over all their requests, throughput over the sum of their durations; mean preemptions."""
    from workloads.metrics import summarize

    duration = sum(summarize(recs)["duration_s"] for recs in record_lists)
    out = summarize([r for recs in record_lists for r in recs], duration_s=duration)
    if preemptions is not None:
        out["server_num_preemptions"] = sum(preemptions) / len(preemptions)
    return out


def real_pooled(runs: list, step_log: str | Path) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(pooled metrics of ``runs``, each run's own metrics) of a real server."""
    each = [real_summary(run, step_log) for run in runs]
    return pooled_summary([run.records for run in runs], [m["server_num_preemptions"] for m in each]), each


def real_pooled_unstalled(runs: list) -> tuple[dict[str, float], int]:
    """Pooled metrics of ``runs`` without the requests whose timings include a client stall
    (``RequestRecord.client_stall_s``: the load generator's own process stood still), and how many
    were left out. Shows how much of a TTFT-tail error is the measuring machine's."""
    kept = [[r for r in run.records if r.client_stall_s == 0] for run in runs]
    return pooled_summary(kept), sum(len(run.records) - len(k) for run, k in zip(runs, kept))


def sim_pooled(requests: list[Request], model_dir, profile, runs: int = SIM_RUNS,
               **kwargs: Any) -> tuple[dict[str, float], list[dict[str, float]]]:  # fmt: skip
    """(pooled metrics, each run's own metrics) of ``runs`` simulated runs of ``requests`` (seeds
    0.., i.e. their own front-end latency and step-noise draws), pooled as ``real_pooled``."""
    from simulator import simulate

    res = [simulate(requests, model_dir=model_dir, step_model=profile, seed=k, **kwargs) for k in range(runs)]
    each = [{**r.summary, "server_num_preemptions": float(r.num_preemptions)} for r in res]
    return pooled_summary([r.records for r in res], [e["server_num_preemptions"] for e in each]), each


def self_spread(pooled: dict[str, float], each: list[dict[str, float]]) -> dict[str, float]:
    """Per metric, the largest relative distance of one real replay from the pool."""
    return {m: max(Comparison(pooled, e).rel_err(m) for e in each) for m in METRICS}


def sim_kwargs(profile, run=None, step_log: str | Path | None = None) -> dict[str, Any]:
    """``simulate`` engine limits equal to the calibrated server's (from its step log); with
    ``run``, also the step token counts that server had run before ``run`` started (it had
    built their kernels, so the sim must not charge their first run again)."""
    e = profile.meta["engine"]
    from serving.engine import EngineLimits

    kw: dict[str, Any] = {"engine": EngineLimits(**{k: e[k] for k in EngineLimits.__dataclass_fields__ if k in e})}
    if run is not None:
        from simulator.step_log import num_tokens_run, read_step_log

        kw["warm_num_tokens"] = num_tokens_run(read_step_log(step_log)[2], run.t0)
    return kw


@dataclass
class Comparison:
    real: dict[str, float]
    sim: dict[str, float]

    def rel_err(self, metric: str) -> float:
        r, s = self.real[metric], self.sim[metric]
        return abs(s - r) / abs(r) if r else (0.0 if s == r else float("inf"))

    def table(self) -> str:
        lines = [f"{'metric':<26}{'real':>12}{'sim':>12}{'error':>9}"]
        for m in METRICS:
            lines.append(f"{m:<26}{self.real[m]:>12.2f}{self.sim[m]:>12.2f}{self.rel_err(m):>9.1%}")
        return "\n".join(lines)


def real_summary(run, step_log: str | Path) -> dict[str, float]:
    """Client metrics of a real run plus the engine's preemptions during it (from the step log)."""
    from simulator.step_log import read_step_log
    from workloads.metrics import summarize

    out = summarize(run.records)
    _, _, steps = read_step_log(step_log)
    end = run_end(run)
    out["server_num_preemptions"] = float(sum(s.get("preempted", 0) for s in steps if run.t0 <= s["t0"] <= end))
    return out


def step_model_ratio(profile, run, step_log: str | Path) -> float:
    """Mean predicted / mean measured cycle over the real engine steps of ``run``: separates a
    step-model error (or the server drifting since calibration) from front-end latency errors."""
    from simulator.step_log import read_step_log, step_cycles
    from simulator.step_model import cycle_time

    _, adds, steps = read_step_log(step_log)
    cycles = step_cycles(steps, adds, run.t0, run_end(run))
    pred = sum(cycle_time(profile, c.shape, arrivals=c.arrivals, new_shape=c.new_shape) for c in cycles)
    return pred / sum(c.seconds for c in cycles)


def run_end(run) -> float:
    return run.t0 + max(r.actual_send_s + (r.e2e_s or 0) for r in run.records)
