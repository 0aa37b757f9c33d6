"""Run an experiment: plan cells, validate all of them, run the missing ones, record, compare.

Order matters for robustness: every cell is composed and validated (backend, model preset,
policy/allocator names and arguments, workload files and loader arguments) before the first
server starts; a failing cell is recorded as FAILED with its server log and the grid goes on;
Ctrl-C stops every server and marks the interrupted runs KILLED.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

import policies
from orchestrator.backends import CellFailed, CellResult, CellSpec, backend_class, make_backend
from orchestrator.checks import check_engine, check_known_keys
from orchestrator.grid import Cell, plan_cells
from serving.models import MODEL_PRESETS, load_model_config, write_model_dir
from orchestrator.progress import GridProgress
from orchestrator.report import (
    CellData, compared_value, comparison_table, plot_cell_timeseries, plot_latency_percentiles, plot_timeseries,
    plot_ttft_cdf, print_table, save_table_png,
)  # fmt: skip
from serving.server import vllm_version
from orchestrator.signals import signal_name, signals_ignored, stop_signals_raise
from orchestrator.tracking import StoreError, Tracker
from orchestrator.workload import build_requests
from workloads.metrics import load_records, records_frame, save_parquet


class ConfigError(ValueError):
    """A cell config that cannot run; raised before any server starts."""


@dataclass
class ExperimentResult:
    finished: int
    failed: int
    skipped: int
    table: pd.DataFrame
    results_dir: Path
    parent_run_id: str
    tracking_uri: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


def prepare(cells: Sequence[Cell], results_dir: Path) -> list[CellSpec]:
    """Validate every cell and build its requests; raise ``ConfigError`` naming the cell and key."""
    model_root = results_dir.resolve() / "models"
    exp_dir = results_dir.resolve() / _slug(cells[0].cfg.experiment_name) if cells else results_dir
    built: dict[str, list] = {}
    specs = []
    for cell in cells:
        c = cell.cfg
        try:
            check_known_keys(c)
            backend_class(c.backend.name)
            if c.model.preset not in MODEL_PRESETS:
                raise ValueError(f"model.preset: unknown preset {c.model.preset!r}; known: {sorted(MODEL_PRESETS)}")
            try:
                policies.schedlab_config(
                    c.policy.name, dict(c.policy.args), c.allocator.name, dict(c.allocator.args), c.check_invariants
                )
            except ValueError as e:
                raise ValueError(f"policy/allocator: {e}") from None
            model_dir = write_model_dir(c.model.preset, model_root, dict(c.model.arch_overrides) or None)
            max_len = c.model.max_model_len or load_model_config(model_dir)["max_position_embeddings"]
            check_engine(c, max_len)
            wkey = json.dumps([OmegaConf.to_container(c.workload), c.seed, str(model_dir), max_len], sort_keys=True)
            if wkey not in built:
                built[wkey] = build_requests(c.workload, c.seed, model_dir, max_len)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ConfigError(f"cell [{cell.label}]: {e}") from None
        out_dir = exp_dir / "cells" / f"{_slug(cell.label)}-{cell.key[:8]}"
        cfg = OmegaConf.to_container(c, resolve=True)
        specs.append(CellSpec(cell.key, cell.label, cfg, built[wkey], str(out_dir)))
    return specs


def _cell_data(cell: Cell, cfg: DictConfig, status: str, summary=None, records=None, ts=None) -> CellData:
    return CellData(dims=cell.dims, compared=compared_value(cell.cfg, cfg.compare_by), status=status,
                    summary=dict(summary or {}), records=records, timeseries=ts)  # fmt: skip


def _record_outcome(tracker: Tracker, run_id: str, spec: CellSpec, outcome: CellResult | BaseException) -> str:
    """Record a cell's result or failure in MLflow and its directory; return its one-line summary."""
    if isinstance(outcome, CellResult):
        _record_success(tracker, run_id, spec, outcome)
        tracker.end_cell(run_id, "FINISHED")
        s = outcome.summary
        return (f"ttft p50 {s.get('ttft_ms_p50', float('nan')):.0f} ms, "
                f"e2e p99 {s.get('e2e_ms_p99', float('nan')):.0f} ms, "
                f"{int(s.get('num_completed', 0))}/{int(s.get('num_requests', 0))} ok")  # fmt: skip
    err = f"{type(outcome).__name__}: {outcome}"
    try:
        if isinstance(outcome, CellFailed):
            _log_server_log(tracker, run_id, Path(spec.out_dir), outcome.log_path, outcome.log_text)
    finally:
        tracker.end_cell(run_id, "FAILED", err)
    return str(outcome).strip().splitlines()[0] if str(outcome).strip() else type(outcome).__name__


def _record_success(tracker: Tracker, run_id: str, spec: CellSpec, res: CellResult) -> tuple[pd.DataFrame, Path]:
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker.log_result(run_id, {**res.summary, "cell_wall_s": res.wall_s}, res.timeseries)
    save_parquet(res.records, out / "requests.parquet")
    (out / "summary.json").write_text(json.dumps(res.summary, indent=2, sort_keys=True, default=str))
    tracker.log_artifact(run_id, out / "requests.parquet")
    tracker.log_artifact(run_id, out / "summary.json")
    if res.timeseries is not None:
        res.timeseries.to_parquet(out / "timeseries.parquet", index=False)
        tracker.log_artifact(run_id, out / "timeseries.parquet")
        png = plot_cell_timeseries(res.timeseries, spec.label, out / "kv_usage_queue_length.png")
        if png:
            tracker.log_artifact(run_id, png, "plots")
    _log_server_log(tracker, run_id, out, res.log_path, res.log_text)
    if res.info:
        tracker.client.log_batch(run_id, tags=[_tag(f"schedlab.{k}", v) for k, v in res.info.items()])
    return records_frame(res.records), out


def _tag(k: str, v: str):
    from mlflow.entities import RunTag

    return RunTag(k, str(v)[:5000])


def _log_server_log(tracker: Tracker, run_id: str, out: Path, log_path: str | None, log_text: str | None) -> None:
    if log_text is not None and (log_path is None or not Path(log_path).exists()):
        out.mkdir(parents=True, exist_ok=True)
        log_path = str(out / "server.log")
        Path(log_path).write_text(log_text)
    if log_path and Path(log_path).exists():
        tracker.log_artifact(run_id, log_path)


def _read_back(tracker: Tracker, run) -> tuple[dict, pd.DataFrame | None, pd.DataFrame | None]:
    """Metrics, per-request frame and time series of an earlier FINISHED run (resume)."""
    summary = {k: v for k, v in run.data.metrics.items() if not k.startswith("timeseries/")}
    records = ts = None
    with tempfile.TemporaryDirectory() as d:
        p = tracker.download(run.info.run_id, "requests.parquet", d)
        if p:
            records = records_frame(load_records(p))
        p = tracker.download(run.info.run_id, "timeseries.parquet", d)
        if p:
            ts = pd.read_parquet(p)
    return summary, records, ts


def run_experiment(cfg: DictConfig, task_overrides: Sequence[str], console: Console | None = None) -> ExperimentResult:
    """Plan, validate, run and report a grid. SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt``
    after every server is stopped and every open run (cells and parent) is marked KILLED."""
    console = console or Console(soft_wrap=True)  # long result lines stay one line in logs
    try:
        cells = plan_cells(cfg, task_overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"grid: {e}") from None
    specs = prepare(cells, Path(cfg.results_dir).resolve())  # all validation happens here, before any server
    try:
        tracker = Tracker(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    with stop_signals_raise():
        try:
            return _run_grid(cfg, cells, specs, tracker, console)
        except KeyboardInterrupt as e:
            with signals_ignored():
                tracker.kill_open(f"interrupted ({signal_name(e)})")
            raise


def _run_grid(cfg: DictConfig, cells: list[Cell], specs: list[CellSpec], tracker: Tracker,
              console: Console) -> ExperimentResult:  # fmt: skip
    by_key = {c.key: c for c in cells}
    exp_dir = Path(cfg.results_dir).resolve() / _slug(cfg.experiment_name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    parent_id = tracker.start_parent(cfg, len(cells))
    done_runs = {} if cfg.force else {c.key: r for c in cells if (r := tracker.finished_run(c))}
    todo = [s for s in specs if s.key not in done_runs]
    console.print(
        f"[bold]{cfg.experiment_name}[/]: {len(cells)} cells on backend [cyan]{cfg.backend.name}[/], "
        f"{len(todo)} to run, {len(done_runs)} already FINISHED"
        + (" (skipped; force=true re-runs them)" if done_runs else "")
    )
    console.print(f"MLflow: {tracker.tracking_uri}  experiment {cfg.experiment_name!r}  parent run {parent_id}")

    data: dict[str, CellData] = {}
    status: dict[str, tuple[str, str | None, float]] = {}  # key -> (status, run_id, wall_s)
    running: dict[str, tuple[str, object, float]] = {}  # key -> (run_id, progress task, t0)
    backend = make_backend(cfg)
    version = vllm_version()
    with GridProgress(len(todo), enabled=cfg.progress, console=console) as gp:

        def started(spec: CellSpec):
            task = gp.cell_started(spec.label)
            run_id = tracker.start_cell(by_key[spec.key], {"vllm_version": version})
            running[spec.key] = (run_id, task, time.monotonic())
            return task

        try:
            for spec, outcome in backend.map_cells(todo, started):
                cell = by_key[spec.key]
                run_id, task, t0 = running.pop(spec.key)
                wall = time.monotonic() - t0
                try:
                    line = _record_outcome(tracker, run_id, spec, outcome)
                    if isinstance(outcome, CellResult):
                        data[spec.key] = _cell_data(cell, cfg, "FINISHED", outcome.summary,
                                                    records_frame(outcome.records), outcome.timeseries)  # fmt: skip
                except Exception as e:  # a recording error fails this cell only; the grid goes on
                    outcome = e
                    line = f"recording failed: {type(e).__name__}: {e}"
                    tracker.end_cell(run_id, "FAILED", line)
                if isinstance(outcome, CellResult):
                    status[spec.key] = ("FINISHED", run_id, wall)
                    gp.cell_done(task, f"[green]FINISHED[/] {spec.label}  {wall:.1f} s  {line}")
                else:
                    data[spec.key] = _cell_data(cell, cfg, "FAILED")
                    status[spec.key] = ("FAILED", run_id, wall)
                    gp.cell_done(task, f"[red]FAILED[/] {spec.label}  {wall:.1f} s  {line[:300]}")
        except KeyboardInterrupt as e:
            with signals_ignored():  # a second signal must not cut the clean-up short
                gp.print(f"[red]interrupted ({signal_name(e)}): stopping servers[/]")
                backend.stop_all()
                tracker.kill_open(f"interrupted ({signal_name(e)})")
            raise
        finally:
            backend.close()

    for key, run in done_runs.items():
        summary, frame, ts = _read_back(tracker, run)
        data[key] = _cell_data(by_key[key], cfg, "FINISHED", summary, frame, ts)
        status[key] = ("SKIPPED", run.info.run_id, 0.0)
    ordered = [data[c.key] for c in cells if c.key in data]
    table = _report(cfg, tracker, ordered, exp_dir, console)
    pd.DataFrame(
        [{"cell": c.label, "key": c.key, "status": status[c.key][0], "run_id": status[c.key][1],
          "wall_s": round(status[c.key][2], 2)} for c in cells]
    ).to_csv(exp_dir / "cells.csv", index=False)  # fmt: skip
    tracker.log_artifact(parent_id, exp_dir / "cells.csv")
    failed = sum(1 for s, _, _ in status.values() if s == "FAILED")
    finished = sum(1 for s, _, _ in status.values() if s == "FINISHED")
    tracker.log_result(parent_id, {"cells_finished": finished, "cells_failed": failed,
                                   "cells_skipped": len(done_runs)}, None)  # fmt: skip
    tracker.end_parent("FAILED" if failed and not finished and not done_runs else "FINISHED")
    console.print(
        f"{finished} finished, {failed} failed, {len(done_runs)} skipped. Results in {exp_dir}\n"
        f"MLflow UI: mlflow ui --backend-store-uri {tracker.tracking_uri}  (then open http://127.0.0.1:5000)"
    )
    return ExperimentResult(finished, failed, len(done_runs), table, exp_dir, parent_id, tracker.tracking_uri)


def _report(cfg: DictConfig, tracker: Tracker, cells: list[CellData], exp_dir: Path, console: Console) -> pd.DataFrame:
    table = comparison_table(cells, cfg.compare_by, cfg.baseline)
    print_table(table, cfg.compare_by, cfg.baseline, cfg.experiment_name)
    if table.empty:
        return table
    table.to_csv(exp_dir / "comparison.csv", index=False)
    outputs = [
        exp_dir / "comparison.csv",
        save_table_png(table, cfg.compare_by, cfg.baseline, exp_dir / "comparison.png", cfg.experiment_name),
        plot_ttft_cdf(cells, cfg.compare_by, exp_dir / "ttft_cdf.png"),
        plot_latency_percentiles(cells, cfg.compare_by, exp_dir / "latency_percentiles.png"),
        plot_timeseries(cells, cfg.compare_by, exp_dir / "kv_usage_queue_length.png"),
    ]
    for p in outputs:
        if p is not None:
            tracker.log_artifact(tracker.parent_id, p)
    return table
