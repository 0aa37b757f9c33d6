"""The whole orchestrator loop (plan, validate, run, MLflow, resume, force, report) on ``backend=sim``:
vLLM's real Scheduler in-process, so it runs in seconds without a server."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

import orchestrator.config  # noqa: F401
from orchestrator.experiment import run_experiment

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        return run_experiment(cfg, overrides)


def cell_runs(results: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sjf_vs_fcfs")
    return client.search_runs([exp.experiment_id], filter_string="tags.`schedlab.role` = 'cell'")


def test_sim_grid_resume_and_force(tmp_path):
    ov = ["experiment=sjf_vs_fcfs", "backend=sim", "backend.step_model=linear:cpu_tiny", f"results_dir={tmp_path}",
          "debug=smoke", "grid.workload=[synthetic_poisson]", "workload.num_requests=60"]  # fmt: skip
    first = run(ov)
    assert (first.finished, first.failed, first.skipped) == (2, 0, 0)
    runs = cell_runs(tmp_path)
    assert sorted(r.data.params["policy"] for r in runs) == ["fcfs", "sjf"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["num_completed"] == 60 for r in runs)

    # With 2 decode slots a queue forms, and SJF on the exact hint must cut the median TTFT.
    table = pd.read_csv(tmp_path / "sjf_vs_fcfs" / "comparison.csv")
    fcfs, sjf = (table[table.policy == p].iloc[0] for p in ("fcfs", "sjf"))
    assert sjf["ttft_ms_p50"] < fcfs["ttft_ms_p50"] and sjf["ttft_ms_p50_delta_pct"] < 0

    again = run(ov)
    assert (again.finished, again.skipped) == (0, 2)
    assert len(cell_runs(tmp_path)) == 2
    # The table of a resumed run is rebuilt from MLflow: same numbers.
    assert list(again.table["ttft_ms_p50"].round(6)) == list(first.table["ttft_ms_p50"].round(6))

    forced = run(ov + ["force=true"])
    assert (forced.finished, forced.skipped) == (2, 0)
    assert len(cell_runs(tmp_path)) == 4


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory):
    return tmp_path_factory.mktemp("sim_results")  # one MLflow store (created once) for all experiments


@pytest.mark.parametrize("experiment", ["fairness_vtc", "priority_edf", "allocator_sweep", "prefix_mooncake"])
def test_shipped_experiments_run_on_the_simulator(shared_results, experiment):
    res = run([f"experiment={experiment}", "backend=sim", "backend.step_model=linear:cpu_tiny",
               f"results_dir={shared_results}", "debug=smoke", "workload.num_requests=40"])  # fmt: skip
    assert res.failed == 0 and res.finished >= 2
    assert (res.results_dir / "comparison.png").exists()
