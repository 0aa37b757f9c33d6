"""Cells as Ray actors: each actor runs one cell's ``vllm serve`` (the same ``CellRunner`` as
``vllm_local``) with ``num_gpus`` = tensor-parallel size (0 on a CPU-only cluster), and cells run in
parallel up to the cluster's capacity.

``backend.ray_address``: ``auto`` joins a running cluster (``ray start --head`` on the head node,
``ray start --address=...`` on workers, or KubeRay); ``null`` starts a local Ray instance. On a
remote cluster this repository is shipped as the job's ``working_dir`` so the policy plugins are
importable by every server. Results (records, metrics, the server log's text) come back to the
driver, which alone writes to MLflow.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import ray
from omegaconf import DictConfig

from orchestrator.backends.base import Backend
from serving.cell import CellFailed, CellProgress, CellResult, CellSpec, NullProgress
from serving.paths import REPO_ROOT
from serving.runner import CellRunner



@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where cell actors post their progress; the driver polls it for the live display."""

    def __init__(self) -> None:
        self.state: dict[str, tuple] = {}

    def put(self, key: str, phase: str | None, counts: tuple[int, int, int] | None) -> None:
        old_phase, old_counts = self.state.get(key, (None, None))
        self.state[key] = (phase or old_phase, counts or old_counts)

    def get(self) -> dict[str, tuple]:
        return dict(self.state)


class _RemoteProgress:
    def __init__(self, board, key: str) -> None:
        self.board, self.key, self.last = board, key, 0.0

    def phase(self, text: str) -> None:
        self.board.put.remote(self.key, text, None)

    def requests(self, done: int, total: int, in_flight: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.25 or done == total:  # throttled: one small message per 250 ms
            self.last = now
            self.board.put.remote(self.key, None, (done, total, in_flight))


@ray.remote(max_concurrency=2)  # run() and stop() on separate threads, so Ctrl-C can stop a running cell
class CellActor:
    def __init__(self) -> None:
        self.runner = CellRunner()

    def run(self, spec: CellSpec, board=None) -> CellResult:
        try:
            Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
        except OSError:  # the driver's results path does not exist on this node
            spec.out_dir = tempfile.mkdtemp(prefix="schedlab-cell-")
        model_root = Path(tempfile.gettempdir()) / "schedlab-models"
        try:
            progress = _RemoteProgress(board, spec.key) if board is not None else NullProgress()
            result = self.runner.run(spec, progress, model_root)
        except CellFailed as e:
            e.log_text = _read(e.log_path)
            e.info.update(_where())
            raise
        result.log_text = _read(result.log_path)
        result.info.update(_where())
        return result

    def stop(self) -> None:
        self.runner.stop()


def _where() -> dict[str, str]:
    """The node a cell ran on (IP + Ray node id: several raylets may share an IP) and where its code
    was imported from (the runtime_env working_dir copy on a remote cluster)."""
    import serving

    node_id = ray.get_runtime_context().get_node_id()
    return {"node": f"{ray.util.get_node_ip_address()} {node_id[:16]}", "node_id": node_id,
            "code_dir": str(Path(serving.__file__).resolve().parents[1])}  # fmt: skip


def _read(path: str | None) -> str | None:
    try:
        return Path(path).read_text(errors="replace") if path else None
    except OSError:
        return None


class VLLMRayBackend(Backend):
    name = "vllm_ray"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        be = cfg.backend
        runtime_env: dict = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}}  # fmt: skip
        if be.ray_address and be.ray_ship_code:
            runtime_env = {"working_dir": str(REPO_ROOT),
                           "excludes": [".git", ".venv", "results", "**/__pycache__"]}  # fmt: skip
        init_kw = {"address": be.ray_address, "runtime_env": runtime_env, "include_dashboard": False,
                   "log_to_driver": False}  # fmt: skip
        if not be.ray_address and be.ray_num_cpus is not None:
            init_kw["num_cpus"] = be.ray_num_cpus
        self._own_ray = not ray.is_initialized()
        if self._own_ray:
            keep = signal.getsignal(signal.SIGTERM)
            ray.init(**init_kw)
            if keep is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, keep)  # ray.init installs sys.exit on SIGTERM: keep the driver's
        self.live: dict[str, ray.actor.ActorHandle] = {}

    def _capacity(self, num_cpus: float, num_gpus: float) -> int:
        res = ray.cluster_resources()
        cap = math.floor(res.get("CPU", 1) / num_cpus) if num_cpus else 1 << 30
        if num_gpus:
            cap = min(cap, math.floor(res.get("GPU", 0) / num_gpus))
        return max(1, cap)

    def map_cells(
        self, specs: Iterable[CellSpec], started: Callable[[CellSpec], CellProgress]
    ) -> Iterator[tuple[CellSpec, CellResult | BaseException]]:
        be = self.cfg.backend
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        pending = list(specs)
        window = be.max_parallel or len(pending) or 1
        refs: dict[ray.ObjectRef, tuple[CellSpec, ray.actor.ActorHandle]] = {}
        sinks: dict[str, CellProgress] = {}
        board = ProgressBoard.remote()

        def submit(spec: CellSpec) -> None:
            cfg = spec.config()
            num_gpus = cfg.engine.tensor_parallel_size if has_gpus else 0
            actor = CellActor.options(num_cpus=be.num_cpus_per_cell, num_gpus=num_gpus).remote()
            sinks[spec.key] = started(spec)
            sinks[spec.key].phase("starting Ray actor")
            self.live[spec.key] = actor
            refs[actor.run.remote(spec, board)] = (spec, actor)

        if pending:
            cfg0 = pending[0].config()
            cap = self._capacity(be.num_cpus_per_cell, cfg0.engine.tensor_parallel_size if has_gpus else 0)
            window = min(window, cap)
        while pending or refs:
            while pending and len(refs) < window:
                submit(pending.pop(0))
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            if not done:
                for key, (phase, counts) in ray.get(board.get.remote()).items():
                    if key in sinks:
                        if counts:
                            sinks[key].requests(*counts)
                        elif phase:
                            sinks[key].phase(phase)
                continue
            spec, actor = refs.pop(done[0])
            sinks.pop(spec.key, None)
            try:
                outcome: CellResult | BaseException = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                outcome = e.cause if isinstance(e.cause, CellFailed) else CellFailed(str(e))
            except ray.exceptions.RayError as e:  # actor died (OOM, node lost)
                outcome = CellFailed(f"Ray actor failed: {e}")
            self.live.pop(spec.key, None)
            ray.kill(actor)
            yield spec, outcome
        ray.kill(board)

    def stop_all(self) -> None:
        stops = [a.stop.remote() for a in self.live.values()]
        try:
            ray.get(stops, timeout=60)
        except Exception:
            pass
        for a in self.live.values():
            ray.kill(a)
        self.live.clear()

    def close(self) -> None:
        if self._own_ray and ray.is_initialized():
            ray.shutdown()
