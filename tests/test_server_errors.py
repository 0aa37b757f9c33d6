"""How a failing server is reported: its root cause (never a WARNING line), and a server that dies
mid-replay as "server exited with code N during replay: <root cause>" with the records so far (or
"... during warm-up replay: ..." when it dies before the measured replay)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

import orchestrator.config  # noqa: F401
from serving.runner import error_line
from serving.server import pids_matching

REPO = Path(__file__).resolve().parents[1]

# Lines of real vLLM 0.32 CPU server logs (a start-up failure and an engine crash mid-replay).
ULIMIT_WARNING = (
    "(APIServer pid=16984) WARNING 12-06 14:02:00 [system_utils.py:255] Found ulimit of 20000 and failed to "
    "automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like "
    "`OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n"
)
KV_ROOT = ("ValueError: To serve at least one request with the model's max seq len (4096), (0.0 GiB KV cache is "
           "needed, which is larger than the available KV cache memory (0.0 GiB).")  # fmt: skip
START_FAILURE = f"""{ULIMIT_WARNING}
(EngineCore pid=17019) ERROR 12-06 14:02:23 [core.py:1510]     raise ValueError(
(EngineCore pid=17019) ERROR 12-06 14:02:23 [core.py:1510] {KV_ROOT}
Traceback (most recent call last):
  File ".../vllm/v1/core/kv_cache_utils.py", line 1031, in _check_enough_kv_cache_memory
    raise ValueError(
{KV_ROOT}
  File ".../vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {{}}
"""
CRASH = f"""{ULIMIT_WARNING}
(EngineCore pid=18638) ERROR 12-06 14:07:27 [core.py:1512]     raise RuntimeError(f"boom")
(EngineCore pid=18638) ERROR 12-06 14:07:27 [core.py:1512] RuntimeError: CrashAfter: deliberate scheduler failure at step 60
(APIServer pid=18606) ERROR 12-06 14:07:27 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.
(APIServer pid=18606) ERROR 12-06 14:07:27 [serving.py:500] Error in completion stream generator.
INFO:     127.0.0.1:59874 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error
"""
PYDANTIC = f"""{ULIMIT_WARNING}
pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig
max_num_seqs
  Input should be greater than or equal to 1 [type=greater_than_equal, input_value=-1, input_type=int]

"""


@pytest.mark.parametrize("log, root", [
    (START_FAILURE, KV_ROOT),
    (CRASH, "RuntimeError: CrashAfter: deliberate scheduler failure at step 60"),
    (PYDANTIC, "pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig | max_num_seqs | "
               "Input should be greater than or equal to 1 [type=greater_than_equal, input_value=-1, input_type=int]"),
    (ULIMIT_WARNING + "\n(APIServer pid=1) INFO 12-06 14:02:01 [api_server.py:1] Starting vLLM API server\n", ""),
])  # fmt: skip
def test_error_line_is_the_root_cause_never_a_warning(tmp_path, log, root):
    path = tmp_path / "server.log"
    path.write_text(log)
    assert error_line(path) == root


def _crash_cell(tmp_path: Path, *extra: str):
    """One cell whose policy (tests.crash_policy.CrashAfter) kills vLLM's engine once 4 requests
    finished; its MLflow client and cell run."""
    from orchestrator.experiment import run_experiment

    overrides = [
        f"results_dir={tmp_path}", "experiment_name=crash", "progress=false", "policy.name=tests.crash_policy.CrashAfter",
        "+policy.args.after_finished=4", "engine.max_num_seqs=2", "workload.num_requests=20", "workload.rate=20",
        "workload.max_output_len=32", "backend.warmup_requests=1", *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        res = run_experiment(compose("config", overrides=overrides), overrides)
    assert res.failed == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("crash").experiment_id],
                                filter_string="tags.`schedlab.role` = 'cell'")  # fmt: skip
    return client, run


@pytest.mark.server
def test_server_dying_mid_replay_is_reported_with_the_records_so_far(tmp_path):
    """A policy raising in vLLM's scheduler once 4 requests finished (the warm-up request and 3 of the
    trace) kills the engine mid-replay; the API server exits (code 0 in vLLM 0.32). The cell is FAILED
    with that root cause, its records kept."""
    client, run = _crash_cell(tmp_path, "backend.warmup_replay=false")
    assert run.info.status == "FAILED"
    error = run.data.tags["schedlab.error"].splitlines()[0]
    assert error.startswith("CellFailed: server exited with code ")
    assert error.endswith("during replay: RuntimeError: CrashAfter: deliberate scheduler failure after 4 finished "
                          "requests"), error
    assert "requests.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}, run.data.tags["schedlab.error"]
    df = pd.read_parquet(client.download_artifacts(run.info.run_id, "requests.parquet", str(tmp_path / "dl")))
    measured = df[~df.warmup]
    assert len(measured) == 20  # one record per trace request, sent or not
    # 3 trace requests finished before the crash (2 decode slots: a third could finish in the same step)
    assert 3 <= measured.ok.sum() <= 4
    assert measured[~measured.ok].error.notna().all()
    assert (measured[measured.ok].status == 200).all()


@pytest.mark.server
def test_server_dying_in_the_warm_up_replay_fails_the_cell_before_measuring(tmp_path):
    """With ``backend.warmup_replay=true`` the 20-request workload is first replayed once unmeasured:
    the engine dies there (4 finished requests). The cell is FAILED with that phase and root cause, the
    measured replay never starts, and no process of the server is left."""
    client, run = _crash_cell(tmp_path, "backend.warmup_replay=true")
    assert run.info.status == "FAILED"
    error = run.data.tags["schedlab.error"].splitlines()[0]
    assert re.fullmatch(r"CellFailed: server exited with code -?\d+ during warm-up replay: RuntimeError: CrashAfter: "
                        r"deliberate scheduler failure after \d+ finished requests", error), error
    assert pids_matching(str(tmp_path / "models")) == []  # the server's --model path is under results_dir
    assert {"server.log", "requests.parquet"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    df = pd.read_parquet(client.download_artifacts(run.info.run_id, "requests.parquet", str(tmp_path / "dl")))
    # the warm-up replay's records (one per copy of the 20 requests, sent or not), none of a measured replay
    assert len(df) == 20 and df.warmup.all()
    assert 1 <= df.ok.sum() < 20 and df[~df.ok].error.notna().all()
