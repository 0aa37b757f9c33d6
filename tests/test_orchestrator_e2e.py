"""``python -m orchestrator experiment=sjf_vs_fcfs``, shrunk by overrides, on real CPU vLLM servers.

One run (3 server starts: fcfs, sjf, and a cell whose engine args make vLLM fail at start-up) is
checked through ``mlflow.MlflowClient``; re-running it resumes (no server starts); a SIGINT while a
server is up leaves no server process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from serving.server import group_pids, pid_alive, pids_matching

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]

# Client stalls of this shared machine would make a 10-request cell invalid (and re-run on resume)
# now and then: the resume checks here are about the orchestrator, the stall bound has its own tests.
SHRINK = ["debug=smoke", "grid.workload=[synthetic_poisson]", "workload.rate=20", "workload.max_output_len=32",
          "backend.warmup_requests=1", "validity.max_client_stalled_fraction=1"]  # fmt: skip
CRASH_CELLS = "cells=[{policy:fcfs},{policy:sjf},{policy:sjf,engine:{max_num_seqs:-1}}]"
GOOD_CELLS = "cells=[{policy:fcfs},{policy:sjf}]"


def orchestrate(results: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "orchestrator", "experiment=sjf_vs_fcfs", f"results_dir={results}", *SHRINK,
           *overrides]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, orchestrate(results, CRASH_CELLS)


def _client(results: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    return client, client.get_experiment_by_name("sjf_vs_fcfs").experiment_id


def _cell_runs(client, exp_id):
    return client.search_runs([exp_id], filter_string="tags.`schedlab.role` = 'cell'")


def test_grid_records_finished_and_failed_cells(grid_run):
    results, proc = grid_run
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    assert proc.returncode == 1, "exit code 1: the grid ran, one cell failed"
    client, exp_id = _client(results)
    runs = _cell_runs(client, exp_id)
    by_status = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert len(by_status.get("FINISHED", [])) == 2 and len(by_status.get("FAILED", [])) == 1

    failed = by_status["FAILED"][0]
    assert failed.data.params["cfg.engine.max_num_seqs"] == "-1"
    first = failed.data.tags["schedlab.error"].splitlines()[0]
    # The root cause (vLLM's pydantic check of max_num_seqs=-1), not the ulimit WARNING of every CPU log.
    assert "failed to start: pydantic_core._pydantic_core.ValidationError" in first and "max_num_seqs" in first
    assert "Too many open files" not in first
    failed_artifacts = [a.path for a in client.list_artifacts(failed.info.run_id)]
    assert "server.log" in failed_artifacts

    parent_id = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parent_id) == 1
    parent = client.get_run(parent_id.pop())
    assert parent.data.tags["schedlab.role"] == "parent" and parent.info.status == "FINISHED"
    assert {"comparison.csv", "comparison.png", "ttft_cdf.png", "latency_percentiles.png",
            "kv_usage_queue_length.png", "cells.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    for r in by_status["FINISHED"]:
        p, m = r.data.params, r.data.metrics
        assert p["policy"] in ("fcfs", "sjf") and p["workload"] == "synthetic_poisson" and p["seed"] == "0"
        assert p["model"] == "tiny" and p["allocator"] == "default" and p["vllm_version"].startswith("0.32")
        assert p["cfg.workload.num_requests"] == "10"
        assert m["num_completed"] == 10 and m["num_failed"] == 0
        for k in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "e2e_ms_p99", "output_token_throughput",
                  "server_num_preemptions", "server_kv_cache_usage_max", "cell_wall_s"):
            assert k in m, k
        assert m["ttft_ms_p50"] > 0 and m["e2e_ms_p99"] >= m["e2e_ms_p50"]
        assert len(client.get_metric_history(r.info.run_id, "timeseries/kv_cache_usage")) >= 2
        assert len(client.get_metric_history(r.info.run_id, "timeseries/num_waiting")) >= 2
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"requests.parquet", "server.log", "config.yaml", "timeseries.parquet", "plots"} <= arts
        local = client.download_artifacts(r.info.run_id, "requests.parquet", str(results / "dl"))
        df = pd.read_parquet(local)
        assert len(df[~df.warmup]) == 10 and df[~df.warmup].ok.all()
        assert (df[~df.warmup].output_tokens == df[~df.warmup].requested_output_tokens).all()


def test_comparison_outputs_on_disk(grid_run):
    results, proc = grid_run
    table = pd.read_csv(results / "sjf_vs_fcfs" / "comparison.csv")
    assert list(table["policy"]) == ["fcfs", "sjf"]
    assert table.loc[table.policy == "fcfs", "ttft_ms_p50_delta_pct"].iloc[0] == 0
    assert (results / "sjf_vs_fcfs" / "comparison.png").stat().st_size > 1000
    assert "ttft_ms_p99" in proc.stdout and "fcfs" in proc.stdout and "sjf" in proc.stdout


def _server_logs(results: Path) -> dict[Path, tuple[int, int, int]]:
    """Every server log under the results (a started server writes its cell's ``server.log`` anew)."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in results.rglob("server.log")}


def test_rerun_resumes_without_starting_servers(grid_run):
    results, _ = grid_run
    client, exp_id = _client(results)
    before = len(_cell_runs(client, exp_id))
    logs = _server_logs(results)
    # fcfs, sjf and the cell that failed at start-up each wrote one in its cell directory
    assert len([p for p in logs if p.parent.parent.name == "cells"]) == 3, sorted(logs)
    proc = orchestrate(results, GOOD_CELLS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 to run, 2 already FINISHED" in proc.stdout
    # No server started: no new server log, none rewritten, no server process of these results.
    assert _server_logs(results) == logs
    assert _server_pids(str(results / "models")) == []
    assert len(_cell_runs(client, exp_id)) == before
    assert pd.read_csv(results / "sjf_vs_fcfs" / "comparison.csv").shape[0] == 2


def _server_pids(marker: str) -> list[int]:
    return pids_matching(marker)  # the marker, a per-test model path, is only in the servers' command lines


@pytest.mark.parametrize("sig, when", [(signal.SIGINT, "replay"), (signal.SIGTERM, "replay"), (signal.SIGHUP, "startup")])
def test_stop_signal_stops_all_servers_and_marks_runs_killed(tmp_path, sig, when):
    """Ctrl-C, ``timeout``/CI cancel/Slurm (SIGTERM) and a closed SSH session (SIGHUP) alike: no process
    of the server is left, the cell and parent runs are KILLED, the exit code is 128 + the signal."""
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "orchestrator", "experiment=sjf_vs_fcfs", f"results_dir={results}", *SHRINK,
           "grid.policy=[fcfs]", "workload.num_requests=400", "workload.rate=4", "experiment_name=sig"]  # fmt: skip

    def default_dispositions():  # a background shell or nohup starting pytest ignores SIGINT/SIGHUP
        for s in (signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_dispositions)  # fmt: skip
    marker = str(results / "models")  # the server's --model path: unique to this test
    try:
        deadline = time.monotonic() + 240
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            time.sleep(1)
            logs = list(results.glob("sig/cells/*/server.log"))
            text = logs[0].read_text(errors="replace") if logs else ""
            # replay: the server is up and serving; startup: its engine core is being built
            ready = "Application startup complete" in text if when == "replay" else "EngineCore pid=" in text
        assert ready, f"server never reached {when}"
        time.sleep(3)
        servers = _server_pids(marker)
        assert servers, "expected a running vLLM server"
        pgid = os.getpgid(servers[0])
        pids = group_pids(pgid)  # API server, engine core and any helper process
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    assert f"interrupted ({signal.Signals(sig).name})" in out
    assert _server_pids(marker) == [] and group_pids(pgid) == []
    assert [p for p in pids if pid_alive(p)] == []
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sig").experiment_id])
    assert {r.data.tags["schedlab.role"] for r in runs} == {"cell", "parent"}
    assert {r.info.status for r in runs} == {"KILLED"}


def test_cell_timeout_fails_the_cell_and_stops_its_server(tmp_path):
    """The watchdog of ``backend.cell_timeout_s`` stops a server that is still starting."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import orchestrator.config  # noqa: F401
    from orchestrator.backends import CellFailed, CellSpec, NullProgress
    from serving.runner import CellRunner

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["backend.cell_timeout_s=4"])
    spec = CellSpec("k", "timeout", OmegaConf.to_container(cfg, resolve=True), [], str(tmp_path / "cell"))
    with pytest.raises(CellFailed, match="timed out") as e:
        CellRunner().run(spec, NullProgress(), tmp_path / "models")
    # stopped while starting (a tiny server takes ~20 s to start here), by its own log
    assert "Application startup complete" not in Path(e.value.log_path).read_text(errors="replace")
    assert _server_pids(str(tmp_path / "models")) == []
