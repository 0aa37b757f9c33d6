"""A researcher's own package and config directory, outside this repository, with no file added to it:
a policy, an allocator, a workload and an experiment defined in a temp dir, found through
``hydra.searchpath`` (or ``--config-dir``) by every cell's composition, run on ``backend=sim``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]

FILES = {
    "mylab/__init__.py": "",
    "mylab/policies.py": '''
from policies.allocators.lowest_id import LowestIdAllocator
from policies.base import SchedulingPolicy, prompt_len


class ShortPromptFirst(SchedulingPolicy):
    """Shortest prompt first, with a tie-break weight (to check that args reach the class)."""

    name = "short_prompt_first"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def waiting_key(self, request):
        return (self.weight * prompt_len(request), request.arrival_time)


class MyLowestId(LowestIdAllocator):
    name = "my_lowest_id"
''',
    "conf/policy/short_first.yaml": "name: mylab.policies.ShortPromptFirst\nargs:\n  weight: 2.0\n",
    "conf/allocator/my_lowest_id.yaml": "name: mylab.policies.MyLowestId\nargs: {}\n",
    "conf/workload/my_burst.yaml": """loader: synthetic
num_requests: 30
rate: 40.0
max_prompt_len: 512
max_output_len: 32
args:
  prompt_len: uniform:16:400
  output_len: uniform:4:32
""",
    "conf/experiment/my_sweep.yaml": """# @package _global_
experiment_name: my_sweep
compare_by: policy
baseline: fcfs
defaults:
  - override /workload: my_burst
  - override /allocator: my_lowest_id
engine:
  max_num_seqs: 2
grid:
  policy: [fcfs, short_first]
  seed: [0]
""",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lab")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("how", ["searchpath", "config_dir"])
def test_an_experiment_defined_outside_the_repo_runs_on_the_simulator(lab, tmp_path, how):
    conf = lab / "conf"
    where = [f"hydra.searchpath=[file://{conf}]"] if how == "searchpath" else ["--config-dir", str(conf)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(lab)])}
    cmd = [sys.executable, "-m", "orchestrator", *where, "experiment=my_sweep", "backend=sim",
           "backend.step_model=linear:cpu_tiny", "progress=false", f"results_dir={tmp_path / 'results'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=lab, env=env, capture_output=True, text=True, timeout=300)  # run from the lab
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("my_sweep")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`schedlab.role` = 'cell'")
    by_policy = {r.data.params["policy"]: r for r in runs}
    assert sorted(by_policy) == ["fcfs", "mylab.policies.ShortPromptFirst"]
    for r in runs:  # each cell composed with the lab's workload, allocator and experiment keys
        assert r.info.status == "FINISHED" and r.data.metrics["num_completed"] == 30
        assert r.data.params["allocator"] == "mylab.policies.MyLowestId"
        assert r.data.params["cfg.engine.max_num_seqs"] == "2"
    assert by_policy["mylab.policies.ShortPromptFirst"].data.params["cfg.policy.args.weight"] == "2.0"
    assert not (REPO / "conf" / "experiment" / "my_sweep.yaml").exists()
