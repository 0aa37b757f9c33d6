"""Valid cells and sound resume (issue 12, items 2 and 3), on ``backend=sim`` with a real MLflow store.

The verdict rules are checked on summaries with the issue's own numbers; the orchestrator loop
(exclusion from the table, re-run on resume, ``invalid_ok``, outputs covering every cell in
MLflow) on the simulator, where a cell takes a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import orchestrator.config  # noqa: F401
from orchestrator.experiment import run_experiment
from orchestrator.grid import plan_cells, plugin_source_hash
from orchestrator.validity import invalid_reasons

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BASE = ["experiment=sjf_vs_fcfs", "backend=sim", "grid.workload=[synthetic_poisson]", "grid.seed=[0]",
        "workload.num_requests=30", "progress=false"]  # fmt: skip
BOUNDS = OmegaConf.structured(orchestrator.config.ValidityConfig)


def run(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return run_experiment(compose("config", overrides=overrides), overrides)


def keys(overrides: list[str]) -> list[str]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return [c.key for c in plan_cells(compose("config", overrides=overrides), overrides)]


def cell_runs(results: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sjf_vs_fcfs")
    return client, client.search_runs([exp.experiment_id], filter_string="tags.`schedlab.role` = 'cell'")


# --- item 2: the verdict -------------------------------------------------------------------
def test_verdict_rules_on_the_issues_cases():
    ok = {"num_requests": 200, "num_completed": 200, "num_failed": 0, "num_client_stalled": 3,
          "send_lag_ms_p99": 400, "num_trace_requests": 200, "warmup_required": 1, "warmup_replay_requests": 200}  # fmt: skip
    assert invalid_reasons(ok, BOUNDS) == []
    # request_timeout_s=0.05: 189 of 200 failed, the 11 survivors' TTFT is not a result
    (why,) = invalid_reasons({**ok, "num_failed": 189, "num_completed": 11, "num_client_stalled": 0}, BOUNDS)
    assert why.startswith("189 of 200 requests failed")
    assert invalid_reasons({**ok, "num_failed": 2}, OmegaConf.merge(BOUNDS, {"max_failed_fraction": 0.01})) == []
    assert "server not warm" in invalid_reasons({**ok, "warmup_replay_requests": 0}, BOUNDS)[0]
    assert "server not warm" in invalid_reasons({**ok, "warmup_replay_failed": 5}, BOUNDS)[0]
    assert invalid_reasons({**ok, "warmup_required": 0, "warmup_replay_requests": 0}, BOUNDS) == []  # sim / GPU
    assert "client stalls" in invalid_reasons({**ok, "num_client_stalled": 40}, BOUNDS)[0]  # 20% > 10%
    assert "send lag p99 1500 ms" in invalid_reasons({**ok, "send_lag_ms_p99": 1500}, BOUNDS)[0]
    assert "replay ended early: 150 of 200" in invalid_reasons({**ok, "num_requests": 150, "num_completed": 150},
                                                               BOUNDS)[0]  # fmt: skip


def test_invalid_cells_leave_the_table_rerun_on_resume_and_invalid_ok_keeps_them(tmp_path):
    strict = [*BASE, f"results_dir={tmp_path}", "validity.max_send_lag_ms_p99=-1",  # the sim's lag is 0 > -1
              "validity.retries=0"]  # fmt: skip
    first = run(strict)
    assert (first.finished, first.skipped) == (2, 0) and first.table.empty
    client, runs = cell_runs(tmp_path)
    for r in runs:
        assert r.data.tags["schedlab.valid"] == "false" and "send lag" in r.data.tags["schedlab.invalid_reason"]
        summary = json.loads(Path(client.download_artifacts(r.info.run_id, "summary.json", str(tmp_path))).read_text())
        assert summary["validity"]["valid"] is False and "send lag" in summary["validity"]["reasons"][0]
    listed = pd.read_csv(first.results_dir / "cells.csv")
    assert len(listed) == 2 and not listed["in_table"].any() and listed["reason"].str.contains("send lag").all()
    assert not (first.results_dir / "comparison.csv").exists()

    again = run(strict)  # invalid cells are not reused
    assert (again.finished, again.skipped) == (2, 0) and len(cell_runs(tmp_path)[1]) == 4

    kept = run([*strict, "invalid_ok=true"])
    assert (kept.finished, kept.skipped) == (0, 2) and list(kept.table["policy"]) == ["fcfs", "sjf"]

    # The verdict is re-judged under today's bounds: with the default ones the cells are valid.
    relaxed = run([*BASE, f"results_dir={tmp_path}"])
    assert (relaxed.finished, relaxed.skipped) == (0, 2) and len(relaxed.table) == 2
    assert pd.read_csv(relaxed.results_dir / "cells.csv")["valid"].all()


def test_cells_the_machine_disturbed_run_again_and_every_attempt_stays_recorded(tmp_path):
    # A send-lag bound no replay meets: each cell runs 1 + 2 times, every run recorded and marked invalid.
    res = run([*BASE, f"results_dir={tmp_path}/lag", "validity.max_send_lag_ms_p99=-1", "validity.retries=2"])
    _, runs = cell_runs(tmp_path / "lag")
    assert res.finished == 2 and res.table.empty and len(runs) == 6
    assert all(r.data.tags["schedlab.valid"] == "false" for r in runs)
    assert list(pd.read_csv(res.results_dir / "cells.csv")["attempts"]) == [3, 3]
    # Failed requests are not the machine's doing: no retry.
    run([*BASE, f"results_dir={tmp_path}/failed", "validity.max_failed_fraction=-1", "validity.retries=2"])
    assert len(cell_runs(tmp_path / "failed")[1]) == 2


# --- item 3: the cell key and all-cells outputs ----------------------------------------------
@pytest.mark.parametrize("override", [
    "backend.request_timeout_s=0.05", "backend.cell_timeout_s=60", "backend.warmup_replay=false",
    "backend.warmup_requests=5", "engine.max_num_batched_tokens=512", "engine.extra_args=[--swap-space,1]",
    "backend.step_model=roofline:a100",
])  # fmt: skip
def test_cell_key_covers_settings_that_change_results(override):
    base = BASE if "step_model" in override else [*BASE, "backend=vllm_local"]  # each backend's own keys
    assert set(keys(base)).isdisjoint(keys([*base, override]))


def test_cell_key_ignores_where_and_how_it_is_recorded():
    same = ["results_dir=/elsewhere", "validity.max_failed_fraction=0.5", "invalid_ok=true", "compare_by=workload",
            "progress=true", "force=true"]  # fmt: skip
    assert keys(BASE) == keys([*BASE, *same])
    local = [*BASE, "backend=vllm_local"]
    assert keys(local) == keys([*local, *same, "backend.startup_timeout_s=9"])


def test_cell_key_covers_the_plugins_source(tmp_path, monkeypatch):
    mod = tmp_path / "lab_policy_src.py"
    mod.write_text("from policies.scheduling.fcfs import FCFS\n\n\nclass LabFCFS(FCFS):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ov = [*BASE, "grid.policy=[fcfs]", "policy.name=lab_policy_src.LabFCFS"]
    plugin_source_hash.cache_clear()
    before, fcfs_before = keys(ov), plugin_source_hash("fcfs", "default")
    mod.write_text(mod.read_text() + "    # edited: a new tie-break\n")
    plugin_source_hash.cache_clear()
    assert keys(ov) != before
    assert plugin_source_hash("fcfs", "default") == fcfs_before  # the built-in's code did not change
    plugin_source_hash.cache_clear()


def test_outputs_cover_every_cell_of_the_experiment_in_mlflow(tmp_path):
    rd = f"results_dir={tmp_path}"
    run([*BASE, rd, "grid.policy=[fcfs]"])
    second = run([*BASE, rd, "grid.policy=[sjf]"])  # this invocation ran only sjf
    assert (second.finished, second.skipped) == (1, 0)
    assert list(pd.read_csv(second.results_dir / "comparison.csv")["policy"]) == ["fcfs", "sjf"]
    # Another step model under the same experiment: its own group, nothing overwritten or merged.
    third = run([*BASE, rd, "backend.step_model=roofline:a100"])
    assert (third.finished, third.skipped) == (2, 0)
    table = pd.read_csv(third.results_dir / "comparison.csv")
    assert len(table) == 4 and set(table["n_seeds"]) == {1}
    assert sorted(set(table["group"])) == ["backend.step_model=roofline:a100", "backend.step_model=roofline:h100"]
    cells = pd.read_csv(third.results_dir / "cells.csv")
    assert len(cells) == 4 and sorted(cells["this_invocation"].fillna("")) == ["", "", "ran", "ran"]
    client, _ = cell_runs(tmp_path)
    parent_csv = client.download_artifacts(third.parent_run_id, "cells.csv", str(tmp_path / "dl"))
    assert len(pd.read_csv(parent_csv)) == 4
    parent_table = client.download_artifacts(third.parent_run_id, "comparison.csv", str(tmp_path / "dl"))
    assert len(pd.read_csv(parent_table)) == 4
