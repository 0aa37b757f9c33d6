"""``backend=vllm_ray``: a 2-cell grid on a local Ray instance (CPU), both cells' servers as Ray actors
running at the same time (by the servers' own logs), results recorded by the driver in MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from server_log import ran_at_once

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]


def test_ray_backend_runs_two_cells_in_parallel(tmp_path):
    cmd = [
        sys.executable, "-m", "orchestrator", "experiment=sjf_vs_fcfs", "backend=vllm_ray",
        "backend.ray_num_cpus=2", "backend.num_cpus_per_cell=1", f"results_dir={tmp_path}",
        "debug=smoke", "grid.workload=[synthetic_poisson]", "workload.num_requests=8", "workload.rate=20",
        "workload.max_output_len=32", "backend.warmup_requests=1",
        "validity.retries=0",  # a cell the busy machine disturbed stays one run (validity has its own tests)
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sjf_vs_fcfs")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`schedlab.role` = 'cell'")
    assert sorted(r.data.params["policy"] for r in runs) == ["fcfs", "sjf"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params["backend"] == "vllm_ray"
        assert r.data.metrics["num_completed"] == 8
        assert r.data.tags["schedlab.node"]  # set inside the Ray actor
        assert "server.log" in {a.path for a in client.list_artifacts(r.info.run_id)}
    # Both cells' servers were running at once, by their own logs' start and shutdown records.
    logs = [Path(client.download_artifacts(r.info.run_id, "server.log", str(tmp_path / r.info.run_id))).read_text()
            for r in runs]  # fmt: skip
    assert ran_at_once(logs)
