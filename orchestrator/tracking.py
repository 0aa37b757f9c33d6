"""MLflow recording: one parent run per experiment, one child run per cell.

Runs are looked up by tags, which is what makes resume work: a cell's child run carries
``schedlab.cell_key`` (hash of its resolved config); a re-run skips cells whose latest run with
that key is FINISHED. All logging goes through ``MlflowClient`` from the driver process (Ray
workers return results, they never talk to the store).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import mlflow

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in our output
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from orchestrator.grid import Cell, flatten, identity_config, plugin_source_hash

TAG_ROLE = "schedlab.role"
TAG_EXPERIMENT = "schedlab.experiment"
TAG_CELL_KEY = "schedlab.cell_key"
TAG_ERROR = "schedlab.error"
TAG_COORDS = "schedlab.coords"
TAG_VALID = "schedlab.valid"
TAG_INVALID_REASON = "schedlab.invalid_reason"
PARAM_SOURCE = "plugin_source_hash"
TIMESERIES_COLUMNS = ("num_running", "num_waiting", "kv_cache_usage")
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
_MAX_POINTS = 1000  # per time series in MLflow (the full series is in timeseries.parquet)


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{(Path(results_dir).resolve() / 'mlflow.db')}"


def _metric_name(name: str) -> str:
    # MLflow allows alphanumerics, _ - . space / ; tenant names may contain anything else.
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


class StoreError(ValueError):
    """The MLflow store is missing, empty or unreadable while recorded artifacts exist."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_store(db: Path, artifact_root: Path) -> None:
    """Refuse to start a new store next to artifacts of an old one: MLflow would silently create an
    empty database, and every cell would run again with its earlier results unreachable."""
    if db.exists() and db.stat().st_size > 0:
        return
    if artifact_root.is_dir() and any(p.is_file() for p in artifact_root.rglob("*")):
        state = "is empty" if db.exists() else "is missing"
        raise StoreError(
            f"the MLflow store {db} {state}, but {artifact_root} holds artifacts of recorded runs; nothing was "
            f"changed. Restore {db.name} from a backup, or move {artifact_root} away (or set results_dir to a "
            f"new directory) to start afresh"
        )


class Tracker:
    """The MLflow experiment of one schedlab experiment, its parent run and cell runs."""

    def __init__(self, cfg: DictConfig) -> None:
        results = Path(cfg.results_dir).resolve()
        results.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = cfg.mlflow.tracking_uri or default_tracking_uri(results)
        artifact_root = Path(cfg.mlflow.artifact_location or results / "mlartifacts").resolve()
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            check_store(db, artifact_root)
        self.name = cfg.experiment_name
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            exp = self.client.get_experiment_by_name(self.name)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    self.name, artifact_location=(artifact_root / self.name).as_uri()
                )
            else:
                self.experiment_id = exp.experiment_id
        except Exception as e:  # sqlite "file is not a database", "database disk image is malformed", ...
            raise StoreError(
                f"mlflow.tracking_uri: cannot read the MLflow store {self.tracking_uri} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); it is left as it is. Restore it from a "
                f"backup, or set results_dir (or mlflow.tracking_uri) to a new location to start afresh"
            ) from None
        self.parent_id: str | None = None
        self.open_cells: set[str] = set()  # cell runs started and not yet ended (KILLED on a signal)

    # --- parent run -----------------------------------------------------------------------
    def start_parent(self, cfg: DictConfig, num_cells: int) -> str:
        """Re-open the experiment's parent run (one per experiment, resumed across invocations)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'parent'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )  # fmt: skip
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.name,
                tags={TAG_ROLE: "parent", TAG_EXPERIMENT: self.name},
            )  # fmt: skip
            self.parent_id = run.info.run_id
        grid = OmegaConf.to_container(cfg.grid, resolve=True) or {}
        self.client.log_batch(
            self.parent_id,
            tags=[RunTag("schedlab.grid", json.dumps(grid)), RunTag("schedlab.num_cells", str(num_cells))],
        )
        return self.parent_id

    def end_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def kill_open(self, reason: str) -> None:
        """Mark every cell run still open, and the parent run, KILLED (the grid was interrupted)."""
        for run_id in list(self.open_cells):
            self.end_cell(run_id, "KILLED", reason)
        self.end_parent("KILLED")

    # --- cell runs ------------------------------------------------------------------------
    def finished_run(self, cell: Cell, usable: Callable[[Any], bool] = lambda run: True) -> Any | None:
        """Latest FINISHED run of this cell (by its config hash) that ``usable`` accepts, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_CELL_KEY}` = '{cell.key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )  # fmt: skip
        return next((r for r in runs if usable(r)), None)

    def cell_runs(self) -> list[Any]:
        """Every cell run of this experiment, from any invocation, newest first."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'cell'",
                order_by=["attributes.start_time DESC"], max_results=1000, page_token=token,
            )  # fmt: skip
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def start_cell(self, cell: Cell, extra_params: dict[str, str] | None = None) -> str:
        cfg = cell.cfg
        tags = {
            "mlflow.parentRunId": self.parent_id,
            TAG_ROLE: "cell",
            TAG_EXPERIMENT: self.name,
            TAG_CELL_KEY: cell.key,
            "schedlab.backend": cfg.backend.name,
            "policy": cfg.policy.name,
            "allocator": cfg.allocator.name,
            "workload": cfg.workload.loader,
            **{f"dim.{k}": v for k, v in cell.dims.items()},
            TAG_COORDS: json.dumps(cell.coords),
        }
        run = self.client.create_run(self.experiment_id, run_name=cell.label, tags=tags)
        self.open_cells.add(run.info.run_id)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for k in ("grid", "cells"):
            resolved.pop(k, None)
        params = {
            "policy": cfg.policy.name,
            "allocator": cfg.allocator.name,
            "model": cfg.model.preset,
            "workload": cell.dims.get("workload", cfg.workload.loader),
            "seed": str(cfg.seed),
            "backend": cfg.backend.name,
            **{f"cfg.{k}": v for k, v in flatten(resolved).items()},
            PARAM_SOURCE: plugin_source_hash(str(cfg.policy.name), str(cfg.allocator.name)),
            **(extra_params or {}),
        }
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "config.yaml"
            path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            self.client.log_artifact(run.info.run_id, str(path))
        return run.info.run_id

    def log_result(self, run_id: str, summary: dict[str, float], timeseries: pd.DataFrame | None) -> None:
        now = int(time.time() * 1000)
        metrics = [
            Metric(_metric_name(k), float(v), now, 0)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if timeseries is not None and len(timeseries):
            # Time series as metric histories: step = sample index, timestamp = wall time of the sample.
            t0 = now - int(1000 * float(timeseries["t_s"].max()))
            if len(timeseries) > _MAX_POINTS:  # the simulator samples every step: thin it out
                timeseries = timeseries.iloc[:: math.ceil(len(timeseries) / _MAX_POINTS)]
            for col in TIMESERIES_COLUMNS:
                if col not in timeseries:
                    continue
                for i, (t, v) in enumerate(zip(timeseries["t_s"], timeseries[col])):
                    if pd.notna(v):
                        metrics.append(Metric(f"timeseries/{col}", float(v), t0 + int(1000 * t), i))
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def set_validity(self, run_id: str, reasons: list[str]) -> None:
        tags = [RunTag(TAG_VALID, str(not reasons).lower())]
        if reasons:
            tags.append(RunTag(TAG_INVALID_REASON, "; ".join(reasons)[:5000]))
        self.client.log_batch(run_id, tags=tags)

    def end_cell(self, run_id: str, status: str, error: str | None = None) -> None:
        if error:
            self.client.set_tag(run_id, TAG_ERROR, error[:5000])
        self.client.set_terminated(run_id, status=status)
        self.open_cells.discard(run_id)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path | None:
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )
        except Exception:  # missing artifact: the cell is shown without it
            return None


def run_identity(run: Any) -> dict[str, str]:
    """A cell run's measured config, from its ``cfg.*`` params (as ``grid.cell_identity`` gives it)."""
    p = run.data.params
    out = identity_config({k[4:]: v for k, v in p.items() if k.startswith("cfg.")})
    if PARAM_SOURCE in p:
        out[PARAM_SOURCE] = p[PARAM_SOURCE]
    return out


def run_coords(run: Any) -> dict[str, str]:
    """A cell run's coordinates (``schedlab.coords``; runs recorded before it: its ``dim.*`` tags)."""
    tags = run.data.tags
    if TAG_COORDS in tags:
        return json.loads(tags[TAG_COORDS])
    return {k[4:]: v for k, v in tags.items() if k.startswith("dim.")}
