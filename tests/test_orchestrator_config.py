"""Orchestrator without servers: config composition, typed-config errors, grid expansion, early
validation, MLflow recording/resume lookup and the comparison table (real Hydra, real MLflow store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import orchestrator.config  # noqa: F401  (registers the schema)
from orchestrator.experiment import ConfigError, prepare
from orchestrator.grid import expand, plan_cells
from orchestrator.tracking import Tracker
from workloads.metrics import summarize
from workloads.records import RequestRecord

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
EXPERIMENTS = ["sjf_vs_fcfs", "allocator_sweep", "fairness_vtc", "priority_edf", "prefix_mooncake"]


@pytest.fixture()
def hydra_conf():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield


def plan(overrides: list[str]):
    cfg = compose("config", overrides=overrides)
    return cfg, plan_cells(cfg, overrides)


def test_default_config_composes_with_all_groups(hydra_conf):
    cfg = compose("config")
    assert cfg.policy.name == "fcfs" and cfg.allocator.name == "default"
    assert cfg.model.preset == "tiny" and cfg.workload.loader == "synthetic"
    assert cfg.backend.name == "vllm_local"


def test_engine_limits_follow_the_model(hydra_conf):
    # conf/engine/<model>.yaml: the tiny CPU model's limits, the GPU-sized ones for an 8B model.
    tiny, big = compose("config"), compose("config", overrides=["model=llama3_8b"])
    assert (tiny.engine.max_num_seqs, tiny.engine.block_size, tiny.engine.num_gpu_blocks) == (16, 32, 80)
    assert (big.engine.max_num_seqs, big.engine.max_num_batched_tokens, big.engine.block_size) == (256, 8192, 16)
    assert big.engine.num_gpu_blocks is None
    assert compose("config", overrides=["model=llama3_8b", "engine=tiny"]).engine.max_num_seqs == 16


@pytest.mark.parametrize("moved, new", [("model.max_num_seqs=4", "engine.max_num_seqs"),
                                        ("model.num_gpu_blocks_override=9", "engine.num_gpu_blocks")])
def test_a_moved_key_fails_naming_its_new_key(hydra_conf, moved, new):
    with pytest.raises(ConfigError, match=rf"{moved.split('=')[0]} moved to {new}"):
        plan([moved])


def test_a_backend_node_has_only_its_own_fields(hydra_conf):
    with pytest.raises(ConfigCompositionException) as e:
        compose("config", overrides=["backend.step_model=linear:cpu_tiny"])  # vllm_local has no step model
    assert "step_model" in str(e.value) + str(e.value.__cause__)
    assert compose("config", overrides=["backend=sim", "backend.step_model=linear:cpu_tiny"]).backend.step_model


@pytest.mark.parametrize("form", ["experiment=fairness_vtc", "+experiment=fairness_vtc"])
def test_both_experiment_override_forms_select_the_experiment(form):
    # experiment: null in the root defaults; `+experiment=` (the older spelling) is accepted too.
    out = subprocess.run([sys.executable, "-m", "orchestrator", form, "--cfg", "job"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "experiment_name: fairness_vtc" in out.stdout


@pytest.mark.parametrize(
    "override, key",
    [("policy.nmae=sjf", "policy.nmae"), ("engine.max_num_seqs=abc", "engine.max_num_seqs"),
     ("workload.rate=fast", "workload.rate"), ("backend.startup_timeout=3", "backend.startup_timeout")],
)  # fmt: skip
def test_typo_or_wrong_type_fails_naming_the_key(hydra_conf, override, key):
    with pytest.raises(ConfigCompositionException) as e:
        compose("config", overrides=[override])
    text = str(e.value) + str(e.value.__cause__)
    assert key in text


def test_typo_inside_a_group_file_fails(hydra_conf, tmp_path):
    # A group file (in a researcher's own config dir) with a misspelled key is rejected by the schema.
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "typo.yaml").write_text("name: sjf\nargz: {}\n")
    with pytest.raises(ConfigCompositionException) as e:
        compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "policy=typo"])
    assert "argz" in str(e.value) + str(e.value.__cause__)


def test_sjf_vs_fcfs_grid_is_the_product(hydra_conf):
    cfg, cells = plan(["experiment=sjf_vs_fcfs"])
    assert len(cells) == 8
    combos = {(c.cfg.policy.name, c.cfg.workload.loader, c.cfg.seed) for c in cells}
    assert combos == {(p, w, s) for p in ("fcfs", "sjf") for w in ("synthetic", "azure") for s in (0, 1)}
    assert len({c.key for c in cells}) == 8
    # sjf cells carry sjf's parameters from conf/policy/sjf.yaml
    assert all(c.cfg.policy.args.use_hint for c in cells if c.cfg.policy.name == "sjf")


def test_command_line_pins_a_grid_dimension_and_overrides_apply_to_every_cell(hydra_conf):
    _, cells = plan(["experiment=sjf_vs_fcfs", "policy=sjf", "workload.num_requests=7"])
    assert len(cells) == 4
    assert {c.cfg.policy.name for c in cells} == {"sjf"}
    assert {c.cfg.workload.num_requests for c in cells} == {7}
    assert all("policy" not in c.dims for c in cells)


def test_explicit_cells_override_grid_keys():
    # cells replace the plain grid product: the vtc entry over the seeds it does not set, and {} for
    # the grid itself (without it there would be no fcfs baseline).
    out = expand({"policy": ["fcfs", "sjf"], "seed": [0, 1]}, [{"policy": "vtc", "engine": {"max_num_seqs": -1}}, {}])
    assert out == [["policy=vtc", "engine.max_num_seqs=-1", "seed=0"], ["policy=vtc", "engine.max_num_seqs=-1", "seed=1"],
                   ["policy=fcfs", "seed=0"], ["policy=fcfs", "seed=1"], ["policy=sjf", "seed=0"],
                   ["policy=sjf", "seed=1"]]  # fmt: skip
    assert len(expand({"policy": ["fcfs", "sjf"], "seed": [0, 1]}, [{"policy": "vtc"}])) == 2


def test_cell_key_is_stable_and_ignores_how_it_is_run(hydra_conf):
    _, a = plan(["experiment=sjf_vs_fcfs", "grid.seed=[0]"])
    _, b = plan(["experiment=sjf_vs_fcfs", "grid.seed=[0]", "backend.startup_timeout_s=9", "force=true",
                 "results_dir=/elsewhere"])  # fmt: skip
    _, c = plan(["experiment=sjf_vs_fcfs", "grid.seed=[0]", "workload.num_requests=5"])
    assert [x.key for x in a] == [x.key for x in b]
    assert not {x.key for x in a} & {x.key for x in c}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_plans_and_validates(hydra_conf, tmp_path, experiment):
    _, cells = plan([f"experiment={experiment}"])
    specs = prepare(cells, tmp_path)
    assert len(specs) == len(cells) >= 2
    for s in specs:
        assert s.requests and all(len(r.prompt_token_ids) == r.prompt_len for r in s.requests)
        assert all(r.prompt_len + r.output_len <= s.cfg["engine"]["max_model_len"] for r in s.requests)


def test_unknown_policy_fails_before_any_server(hydra_conf, tmp_path):
    # No conf/policy file of that name: Hydra lists the known ones.
    with pytest.raises(Exception, match="shortest_first"):
        plan(["experiment=sjf_vs_fcfs", "grid.policy=[fcfs,shortest_first]"])
    # A name (or dotted class path) the policies registry cannot resolve.
    _, cells = plan(["experiment=sjf_vs_fcfs", "policy.name=shortest_first"])
    with pytest.raises(ConfigError, match="shortest_first"):
        prepare(cells, tmp_path)
    _, cells = plan(["allocator.name=mypkg.nope.Allocator"])
    with pytest.raises(ConfigError, match="mypkg.nope.Allocator"):
        prepare(cells, tmp_path)
    assert not list(tmp_path.glob("**/server.log"))


def test_bad_policy_argument_fails_naming_it(hydra_conf, tmp_path):
    _, cells = plan(["policy=sjf", "+policy.args.use_hints=true"])
    with pytest.raises(ConfigError, match="use_hints"):
        prepare(cells, tmp_path)


def test_missing_trace_file_fails_naming_the_path(hydra_conf, tmp_path):
    _, cells = plan(["workload=azure_sample", "workload.path=/nonexistent/azure.csv"])
    with pytest.raises(ConfigError, match="/nonexistent/azure.csv"):
        prepare(cells, tmp_path)


def test_unknown_loader_argument_fails_naming_it(hydra_conf, tmp_path):
    _, cells = plan(["+workload.args.promt_len=64"])
    with pytest.raises(ConfigError, match="promt_len"):
        prepare(cells, tmp_path)


def _records(n: int, ttft: float, tenant: str = "default") -> list[RequestRecord]:
    return [
        RequestRecord(f"r{i}", tenant=tenant, actual_send_s=0.1 * i, scheduled_send_s=0.1 * i, ttft_s=ttft * (1 + i % 3),
                      e2e_s=ttft * 5 + 0.01 * i, itl_s=[0.01] * 9, prompt_tokens=32, output_tokens=10,
                      requested_output_tokens=10, status=200)
        for i in range(n)
    ]  # fmt: skip


def test_mlflow_tracking_and_resume_lookup(hydra_conf, tmp_path):
    cfg, cells = plan(["experiment=sjf_vs_fcfs", "grid.workload=[synthetic_poisson]", "grid.seed=[0]",
                       f"results_dir={tmp_path}"])  # fmt: skip
    tracker = Tracker(cfg)
    parent = tracker.start_parent(cfg, len(cells))
    fcfs, sjf = cells
    assert tracker.finished_run(fcfs) is None
    run_id = tracker.start_cell(fcfs, {"vllm_version": "0.32.0"})
    recs = _records(20, 0.05)
    ts = pd.DataFrame({"t_s": [0, 0.5, 1.0], "num_running": [1, 3, 2], "num_waiting": [0, 4, 1],
                       "kv_cache_usage": [0.1, 0.5, 0.2]})  # fmt: skip
    tracker.log_result(run_id, summarize(recs), ts)
    tracker.end_cell(run_id, "FINISHED")
    failed = tracker.start_cell(sjf)
    tracker.end_cell(failed, "FAILED", "boom")
    tracker.end_parent()

    assert tracker.finished_run(fcfs).info.run_id == run_id
    assert tracker.finished_run(sjf) is None  # FAILED cells are re-run on resume

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["policy"] == "fcfs" and run.data.params["vllm_version"] == "0.32.0"
    assert run.data.params["cfg.engine.max_num_seqs"] == str(cfg.engine.max_num_seqs)
    assert run.data.metrics["num_completed"] == 20
    history = client.get_metric_history(run_id, "timeseries/num_waiting")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0, 4, 1]
    assert client.get_run(failed).data.tags["schedlab.error"] == "boom"
    # A second tracker (re-run) re-opens the same parent run.
    assert Tracker(cfg).start_parent(cfg, 2) == parent


def test_resolved_config_has_no_interpolations_left(hydra_conf):
    cfg, cells = plan(["experiment=fairness_vtc"])
    assert OmegaConf.is_missing(cells[0].cfg, "experiment_name") is False
    assert cells[0].cfg.policy.name in ("fcfs", "vtc")
