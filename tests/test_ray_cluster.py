"""``backend=vllm_ray backend.ray_address=auto`` on a real two-node Ray cluster on this machine.

Two raylets (``ray start --head`` and ``ray start --address=...``, CPU only, one CPU each, their own
ports and temp dirs) make a cluster on which a 2-cell grid must place one cell per node. The repo
reaches the workers as the job's runtime_env working_dir: no ``pip install`` on the nodes, and the
nodes run with no PYTHONPATH and a working directory outside the repo. A SIGTERM to the driver, or a
Ctrl-C (SIGINT to its process group), must leave no server on either node.

Teardown stops exactly the processes of this cluster, by PID (each has the cluster's temp dir in its
command line), rather than ``ray stop``, which kills every Ray process on the machine, other users'
clusters included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from serving.server import free_port, group_pids, pid_alive, pids_matching
from server_log import ran_at_once

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def cluster_env(cluster: "TwoNodeCluster") -> dict[str, str]:
    """The environment of the cluster's nodes and drivers: HOME inside the cluster's root, so a Ray auth
    token that an earlier local ``ray.init`` left in ~/.ray (Ray 2.60 writes one) is not sent to this
    cluster, which runs without token auth."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HOME"] = str(cluster.root)
    return env


class TwoNodeCluster:
    """A head and a worker raylet on 127.0.0.1, each with 1 CPU, ``--block`` children of the test."""

    def __init__(self) -> None:
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="sl-ray-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, name: str, head: bool, worker_ports: int) -> None:
        temp = self.root / name
        (temp / "tmp").mkdir(parents=True)
        cmd = [RAY, "start", "--block", f"--temp-dir={temp}", "--num-cpus=1", "--num-gpus=0",
               "--object-store-memory=100000000", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 99}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]  # fmt: skip
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                    f"--ray-client-server-port={free_port()}"]  # fmt: skip
        else:
            cmd += [f"--address={self.address}"]
        # No PYTHONPATH, cwd outside the repo: the nodes can import schedlab only from what Ray ships.
        env = {k: v for k, v in cluster_env(self).items() if k != "PYTHONPATH"}
        env["TMPDIR"] = str(temp / "tmp")  # model dirs of the cells' servers land under the cluster's root
        log = open(self.root / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, cwd=temp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))  # fmt: skip

    def start(self) -> "TwoNodeCluster":
        # Worker port ranges: distinct per node, and below Linux's ephemeral range (32768+), where
        # free_port() picks every other port of the two nodes.
        base = 20000 + (os.getpid() % 50) * 200
        self._start("head", True, base)
        self._wait_nodes(1)
        self._start("worker", False, base + 100)
        self._wait_nodes(2)
        return self

    def _wait_nodes(self, n: int) -> None:
        code = (f"import ray, time\nray.init(address='{self.address}', log_to_driver=False)\n"
                f"for _ in range(120):\n    alive = [x for x in ray.nodes() if x['Alive']]\n"
                f"    if len(alive) >= {n}: break\n    time.sleep(0.5)\nprint(len(alive))")  # fmt: skip
        env = cluster_env(self)
        out = None
        for _ in range(10):  # the GCS may not listen yet right after `ray start`
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"`ray start` exited with {dead[0].returncode}:\n{self._logs()}")
            out = subprocess.run([sys.executable, "-c", code], cwd=self.root, env=env, capture_output=True,
                                 text=True, timeout=180)  # fmt: skip
            if out.returncode == 0:
                if out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
                    return
                break  # connected, but the nodes did not all join within a minute
            time.sleep(2)
        raise RuntimeError(f"Ray cluster did not reach {n} nodes: {out.stdout[-2000:]} {out.stderr[-2000:]}\n"
                           f"{self._logs()}")

    def _logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("*.log")))

    def processes(self) -> list[int]:
        return [p for p in pids_matching(str(self.root)) if p != os.getpid()]

    def stop(self) -> None:
        for p in reversed(self.procs):  # `ray start --block` stops its node's processes on SIGTERM
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.processes():  # anything of this cluster still running, by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        yield c.start()
    finally:
        c.stop()
        assert c.processes() == [], "the cluster's processes must all be gone"


def _driver(cluster: TwoNodeCluster, results: Path, name: str, *extra: str) -> list[str]:
    """The driver's command line. ``validity.retries=0``: a cell the busy machine disturbed stays one
    run, so each policy has one cell run (validity has its own tests)."""
    return [sys.executable, "-m", "orchestrator", "experiment=sjf_vs_fcfs", "backend=vllm_ray",
            "backend.ray_address=auto", "backend.num_cpus_per_cell=1", f"results_dir={results}",
            f"experiment_name={name}", "grid.workload=[synthetic_poisson]", "grid.seed=[0]",
            "workload.num_requests=8", "workload.rate=20", "workload.max_output_len=32", "progress=false",
            "backend.warmup_requests=1", "validity.retries=0", *extra]  # fmt: skip


def _driver_env(cluster: TwoNodeCluster) -> dict[str, str]:
    return {**cluster_env(cluster), "RAY_ADDRESS": cluster.address}  # what "auto" resolves to, as on a cluster's head


def _cell_runs(results: Path, name: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id])


def test_grid_runs_one_cell_on_each_node_with_shipped_code(cluster, tmp_path):
    proc = subprocess.run(_driver(cluster, tmp_path, "cluster"), cwd=REPO, env=_driver_env(cluster),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client, runs = _cell_runs(tmp_path, "cluster")
    cells = [r for r in runs if r.data.tags.get("schedlab.role") == "cell"]
    assert sorted(r.data.params["policy"] for r in cells) == ["fcfs", "sjf"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["num_completed"] == 8 for r in cells)
    # One CPU per node and one per cell: the two cells ran one on each raylet, their servers at once.
    assert len({r.data.tags["schedlab.node_id"] for r in cells}) == 2
    assert len({r.data.tags["schedlab.node"] for r in cells}) == 2
    for r in cells:
        code = Path(r.data.tags["schedlab.code_dir"])
        # imported from Ray's copy of the working_dir on that node, not from the repo or an install
        assert str(cluster.root) in str(code) and "runtime_resources" in str(code), code
        assert "server.log" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert ran_at_once([Path(client.download_artifacts(r.info.run_id, "server.log", str(tmp_path / r.info.run_id)))
                        .read_text() for r in cells])  # fmt: skip
    assert cluster.processes(), "the cluster outlives the driver"
    assert pids_matching(f"{cluster.root}/head/tmp/schedlab-models") == []
    assert pids_matching(f"{cluster.root}/worker/tmp/schedlab-models") == []


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT-ctrl-c"])  # fmt: skip
def test_stop_signal_on_the_driver_leaves_no_server_on_either_node(cluster, tmp_path, sig, to_group):
    """SIGTERM (``timeout``, Slurm, a CI cancel) to the driver alone; SIGINT as Ctrl-C sends it, to the
    driver's whole process group. Both servers are up (one per node) when the signal arrives: none may
    be left on either node, the runs are KILLED and the exit code is 128 + the signal."""
    name = f"cluster_{signal.Signals(sig).name.lower()}"

    def default_dispositions():  # a background shell or nohup starting pytest ignores SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(_driver(cluster, tmp_path, name, "workload.num_requests=400", "workload.rate=4"),
                            cwd=REPO, env=_driver_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=default_dispositions)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        up = 0
        while time.monotonic() < deadline and proc.poll() is None and up < 2:
            time.sleep(1)
            logs = list(tmp_path.glob(f"{name}/cells/*/server.log"))
            up = sum("Application startup complete" in p.read_text(errors="replace") for p in logs)
        assert up == 2, "both servers should be up"
        servers = {n: pids_matching(f"{cluster.root}/{n}/tmp/schedlab-models") for n in ("head", "worker")}
        assert servers["head"] and servers["worker"], servers  # one server on each node
        # every process of each server (API server, engine core), by process group
        groups = {n: [p for pid in pids for p in group_pids(os.getpgid(pid))] for n, pids in servers.items()}
        if to_group:
            os.killpg(proc.pid, sig)  # the driver leads its own session: its group is what a terminal signals
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out[-4000:]
    assert f"interrupted ({signal.Signals(sig).name})" in out, out[-4000:]
    for n in ("head", "worker"):
        assert pids_matching(f"{cluster.root}/{n}/tmp/schedlab-models") == [], n
        assert [p for p in groups[n] if pid_alive(p)] == [], n
    _, runs = _cell_runs(tmp_path, name)
    assert {r.info.status for r in runs} == {"KILLED"} and len(runs) == 3  # 2 cells + the parent
