"""Honest errors before any server starts, exit codes, MLflow store damage, recording errors.

All on the simulator backend or before a backend exists: each case fails in seconds, and each
assertion names what a user must see (the key, the value, the file).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

import orchestrator.config  # noqa: F401
from orchestrator.experiment import ConfigError, run_experiment
from workloads import SAMPLES

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
SIM = ["backend=sim", "backend.step_model=linear:cpu_tiny", "progress=false"]


def run(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        return run_experiment(cfg, overrides)


def config_error(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        run([f"results_dir={tmp_path}", *SIM, *overrides])
    assert not (tmp_path / "mlflow.db").exists(), "a config error must fail before MLflow is touched"
    return str(e.value)


@pytest.mark.parametrize("workload", ["synthetic_poisson", "azure_sample", "burstgpt_sample", "mooncake_sample",
                                      "sharegpt_sample"])  # fmt: skip
def test_negative_num_requests_is_an_error_for_every_loader(tmp_path, workload):
    # A trace loader used to slice [:-5] and replay 55 of 60 requests.
    msg = config_error(tmp_path, f"workload={workload}", "workload.num_requests=-5")
    assert "workload.num_requests" in msg and "-5" in msg


def test_header_only_trace_names_the_file(tmp_path):
    trace = tmp_path / "empty.csv"
    trace.write_text(SAMPLES["azure"].read_text().splitlines()[0] + "\n")  # the header, no rows
    msg = config_error(tmp_path, "workload=azure_sample", f"workload.path={trace}")
    assert str(trace) in msg and "no requests" in msg


def test_kv_cache_smaller_than_one_request_names_both_values(tmp_path):
    # 8 blocks x 32 tokens, one of them vLLM's null block: 224 token slots for a 256-token request.
    msg = config_error(tmp_path, "engine.num_gpu_blocks=8", "engine.block_size=32", "engine.max_model_len=256")
    assert "num_gpu_blocks=8" in msg and "max_model_len=256" in msg and ">= 9" in msg
    # 9 blocks hold 256 tokens: valid (the grid runs on the simulator).
    res = run([f"results_dir={tmp_path}", *SIM, "engine.num_gpu_blocks=9", "engine.block_size=32",
               "engine.max_model_len=256", "workload.num_requests=4", "workload.max_output_len=8"])  # fmt: skip
    assert res.finished == 1


@pytest.mark.parametrize("arg", ["--port=8001", "--host", "--port"])
def test_extra_args_may_not_set_host_or_port(tmp_path, arg):
    msg = config_error(tmp_path, f"engine.extra_args=['{arg}','9000']")
    assert "engine.extra_args" in msg and arg in msg


@pytest.mark.parametrize("override", ["+workload.num_requestz=20", "+model.max_num_seq=4", "+backend.startup_timeout=5"])
def test_unknown_plus_key_on_a_typed_group_is_an_error(tmp_path, override):
    key = override[1:].split("=")[0]
    msg = config_error(tmp_path, override)
    assert key in msg and "unknown key" in msg


def test_plus_keys_in_free_form_args_are_allowed(tmp_path):
    res = run([f"results_dir={tmp_path}", *SIM, "workload.num_requests=4", "workload.max_output_len=8",
               "+workload.args.tenants={a:1.0}"])  # fmt: skip
    assert res.finished == 1


def _orchestrate(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_exit_code_2_for_composition_and_validation_errors(tmp_path):
    proc = _orchestrate(f"results_dir={tmp_path}", "policy=no_such_policy")  # Hydra cannot compose
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no_such_policy" in proc.stderr
    proc = _orchestrate(f"results_dir={tmp_path}", *SIM, "+workload.num_requestz=20")  # composes, then refused
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "workload.num_requestz" in proc.stderr


def _sim_grid(results: Path, *extra: str):
    return run(["experiment=sjf_vs_fcfs", f"results_dir={results}", *SIM, "grid.workload=[synthetic_poisson]",
                "grid.seed=[0]", "workload.num_requests=8", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A results directory with a recorded 2-cell grid (copied by each test that damages it)."""
    results = tmp_path_factory.mktemp("recorded")
    assert _sim_grid(results).finished == 2
    return results


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated"])
def test_damaged_mlflow_store_next_to_artifacts_is_refused(recorded, tmp_path, damage):
    results = tmp_path / "results"
    shutil.copytree(recorded, results)
    db = results / "mlflow.db"
    if damage == "missing":
        db.unlink()
    elif damage == "empty":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(b"this is not an sqlite file" * 100)
    else:
        db.write_bytes(db.read_bytes()[:6000])  # header and a few pages of the real file
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as e:
        _sim_grid(results)
    msg = str(e.value)
    assert str(db) in msg and ("backup" in msg or "afresh" in msg), msg
    after = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert after == before, "nothing recorded may be deleted, overwritten or added"


def test_a_recording_error_fails_that_cell_only(recorded, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(recorded, results)
    cells_dir = results / "sjf_vs_fcfs" / "cells"
    sjf_dir = next(d for d in cells_dir.iterdir() if "policy=sjf" in d.name)
    shutil.rmtree(sjf_dir)
    sjf_dir.write_text("a file where the cell's directory should be")
    res = _sim_grid(results, "force=true")
    assert (res.finished, res.failed) == (1, 1)
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sjf_vs_fcfs")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`schedlab.role` = 'cell'",
                              order_by=["attributes.start_time DESC"], max_results=2)  # fmt: skip
    by_policy = {r.data.params["policy"]: r for r in runs}
    assert by_policy["fcfs"].info.status == "FINISHED"
    assert by_policy["sjf"].info.status == "FAILED"
    assert "recording failed" in by_policy["sjf"].data.tags["schedlab.error"]
    parent = client.get_run(by_policy["sjf"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert (results / "sjf_vs_fcfs" / "cells.csv").exists()


def test_a_grid_value_hydra_cannot_compose_is_a_config_error(tmp_path):
    msg = config_error(tmp_path, "experiment=sjf_vs_fcfs", "grid.policy=[fcfs,no_such_policy]",
                       "grid.workload=[synthetic_poisson]", "grid.seed=[0]")  # fmt: skip
    assert "no_such_policy" in msg
