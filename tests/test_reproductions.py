"""The repro_* experiments (docs/reproductions.md) on a few requests: each runs from its config
through the orchestrator on the simulator, and the paper's effect keeps its direction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import orchestrator.config  # noqa: F401
from orchestrator.experiment import run_experiment

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("repro_results")


def run(name: str, results: Path, overrides: list[str]) -> Path:
    ov = [f"experiment={name}", f"results_dir={results}", "progress=false", *overrides]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        res = run_experiment(compose("config", overrides=ov), ov)
    assert res.failed == 0
    return results / name


def test_sjf_on_exact_and_noisy_hints_beats_fcfs(results):
    # 8 batch slots and 80 requests at 50 req/s: a queue forms, whose order SJF changes.
    out = run("repro_sjf_ranking", results, ["workload.num_requests=80", "engine.max_num_seqs=8", "grid.seed=[0,1]"])
    rows = pd.read_csv(out / "reproduction.csv")
    norm = rows[rows.metric == "norm_latency_ms_mean"]
    assert len(norm) == 2  # exact hint (tau 1) and noisy hint
    assert (norm.ratio > 1.2).all(), norm
    exact, noisy = norm.iloc[0], norm.iloc[1]
    assert "tau 1.00" in exact.comparison and "tau 0." in noisy.comparison
    assert exact.ratio >= noisy.ratio  # a worse predictor gives less


def test_fastserve_lowers_mean_jct_once_requests_queue(results):
    # 8 batch slots at 12 req/s: a queue forms, in which skip-join MLFQ with proactive preemption
    # lets short jobs overtake long ones; without preemption (mlfq) nobody waiting is ever demoted,
    # so the order stays FCFS's.
    out = run("repro_fastserve", results, ["workload.num_requests=80", "engine.max_num_seqs=8", "grid.seed=[0,1]",
                                           "grid.workload.rate=[12.0]"])  # fmt: skip
    rows = pd.read_csv(out / "reproduction.csv").set_index(["comparison", "metric"]).ratio
    assert rows[("fastserve vs fcfs @ 12.0 req/s", "e2e_ms_mean")] > 1.2, rows
    assert rows[("fastserve vs mlfq @ 12.0 req/s", "e2e_ms_mean")] > 1.2, rows


def test_chunked_prefill_bounds_tail_tbt_and_raises_capacity(results):
    out = run("repro_sarathi", results, ["workload.num_requests=40", "grid.seed=[0]", "grid.workload.rate=[0.5,2.0,3.0]"])
    sweep = pd.read_csv(out / "budget_sweep.csv")
    at3 = sweep[(sweep.rate == 3.0) & (sweep.metric == "itl_ms_p99")].set_index("engine")["mean"]
    tbt = {int(k.split()[-1]) if k.startswith("chunked, budget") and "chunk " not in k else k: v for k, v in at3.items()}
    tbt[8192] = at3["no chunking"]
    # Without chunking a whole prompt joins the decodes' step: a long stall; a 512-token budget
    # keeps every step short (the SLO is 100 ms).
    assert tbt[8192] > 100 > tbt[512]
    assert tbt[256] <= tbt[512] <= tbt[1024] <= tbt[2048]
    caps = pd.read_csv(out / "capacity.csv").groupby("engine").capacity_req_s.mean()
    assert caps["chunked, budget 512"] > caps["no chunking"]


def test_andes_raises_average_qoe_over_fcfs_under_bursty_load(results):
    out = run("repro_andes", results, ["workload.num_requests=80", "engine.max_num_seqs=8", "grid.seed=[0]",
                                       "grid.workload.rate=[40.0]"])  # fmt: skip
    rows = pd.read_csv(out / "reproduction.csv")
    qoe = rows[rows.metric == "qoe_mean"]
    assert len(qoe) == 1 and qoe.ratio.iloc[0] > 1.05, rows


def test_longest_prefix_first_raises_the_prefix_cache_hit_rate(results):
    out = run("repro_cache", results, ["grid.workload=[shared_history]", "workload.num_requests=160", "grid.seed=[0]"])
    rows = pd.read_csv(out / "reproduction.csv").set_index(["comparison", "metric"]).ratio
    assert rows[("shared_history: lpm+lru vs fcfs+lru", "server_prefix_cache_hit_rate")] > 1.2


def test_lru_keeps_a_revisited_conversation_history_that_fifo_evicts(results):
    # Multi-turn chat with a KV cache smaller than the conversations in flight. Turn k of a
    # conversation hits its history only if the history's first block survived since it was
    # last needed. LRU measures that age from the last turn (every hit refreshes the blocks);
    # FIFO from when the block was first written, so a long conversation's oldest blocks, hit
    # on every turn, are FIFO's first victims and the whole prefix misses.
    out = run("repro_cache", results, ["grid.workload=[multi_turn]", "workload.num_requests=150", "grid.seed=[0]"])
    rows = pd.read_csv(out / "reproduction.csv").set_index(["comparison", "metric"]).ratio
    assert rows[("multi_turn: fcfs+fifo vs fcfs+lru", "server_prefix_cache_hit_rate")] < 0.95, rows


def test_andes_preempts_a_request_far_ahead_of_its_reader(tmp_path):
    """Simulator, 1 ms per step, 2 batch slots: r0 and r1 run ahead of a 5 tokens/s reader; r2
    arrives at 4.5 ms, is urgent (due within 2 s) and displaces one of them at once (first token at
    the end of step 6, 6 ms); under FCFS it waits for r0/r1's 40 steps."""
    from serving.models import write_model_dir
    from simulator import EngineLimits, LinearModel, simulate
    from workloads.trace import Request

    step_model = LinearModel(c0=1e-3, c1=0.0, c2=0.0, c3=0.0, num_gpu_blocks=64)
    trace = [Request("r0", 0.0, 16, 40), Request("r1", 0.0, 16, 40), Request("r2", 4.5e-3, 16, 40)]
    kw = dict(model_dir=write_model_dir("tiny", tmp_path), step_model=step_model, engine=EngineLimits(max_num_seqs=2))
    andes = simulate(trace, policy="andes", policy_args={"urgent_s": 2.0, "min_buffer_s": 0.5}, **kw)
    assert {r.request_id: r.ttft_s for r in andes.records}["r2"] == pytest.approx(1.5e-3)
    assert andes.num_preemptions >= 1
    fcfs = simulate(trace, policy="fcfs", **kw)
    assert fcfs.num_preemptions == 0
    assert {r.request_id: r.ttft_s for r in fcfs.records}["r2"] == pytest.approx(41e-3 - 4.5e-3)
