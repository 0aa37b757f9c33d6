"""Run an experiment: plan cells, validate all of them, run the missing ones, record, compare.

Order matters for robustness: every cell is composed and validated (backend, model preset,
policy/allocator names and arguments, workload files and loader arguments) before the first
server starts; a failing cell is recorded as FAILED with its server log and the grid goes on;
Ctrl-C stops every server and marks the interrupted runs KILLED. A finished cell gets a validity
verdict (orchestrator.validity); only valid runs are reused on resume and compared. The outputs
(comparison, plots, cells.csv, report.html) are rebuilt from every cell of the experiment in MLflow.
"""

from __future__ import annotations

import importlib
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

import policies
from orchestrator.config import ConfigError
from orchestrator.backends import CellFailed, CellResult, CellSpec, backend_class, make_backend
from orchestrator.checks import check_engine
from orchestrator.grid import Cell, plan_cells
from serving.models import MODEL_PRESETS, load_model_config, write_model_dir
from orchestrator.progress import GridProgress
from orchestrator.html_report import write_report
from orchestrator.report import (
    CellData, comparison_table, label_cells, plot_cell_timeseries, plot_latency_percentiles, plot_timeseries,
    plot_ttft_cdf, print_table, save_table_png,
)  # fmt: skip
from serving.server import vllm_version
from orchestrator.signals import signal_name, signals_ignored, stop_signals_raise
from orchestrator.tracking import StoreError, Tracker, run_coords, run_identity
from orchestrator.validity import invalid_reasons, only_disturbed, verdict
from orchestrator.workload import build_requests
from workloads.metrics import load_records, records_frame, save_parquet


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
            max_len = c.engine.max_model_len or load_model_config(model_dir)["max_position_embeddings"]
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


def _record_outcome(
    tracker: Tracker, run_id: str, spec: CellSpec, outcome: CellResult | BaseException, bounds: DictConfig
) -> str:
    """Record a cell's result (with its validity verdict) or failure in MLflow and its directory;
    return its one-line summary."""
    if isinstance(outcome, CellResult):
        reasons = _record_success(tracker, run_id, spec, outcome, bounds)
        tracker.end_cell(run_id, "FINISHED")
        s = outcome.summary
        return ("" if not reasons else f"[yellow]INVALID: {'; '.join(reasons)}[/]  ") + (f"ttft p50 {s.get('ttft_ms_p50', float('nan')):.0f} ms, "
                f"e2e p99 {s.get('e2e_ms_p99', float('nan')):.0f} ms, "
                f"{int(s.get('num_completed', 0))}/{int(s.get('num_requests', 0))} ok")  # fmt: skip
    err = f"{type(outcome).__name__}: {outcome}"
    try:
        if isinstance(outcome, CellFailed):
            out = Path(spec.out_dir)
            if outcome.records:  # what the replay measured before the server died, with each request's status
                out.mkdir(parents=True, exist_ok=True)
                save_parquet(outcome.records, out / "requests.parquet")
                tracker.log_artifact(run_id, out / "requests.parquet")
            _log_server_log(tracker, run_id, out, outcome.log_path, outcome.log_text)
            if outcome.info:
                tracker.client.log_batch(run_id, tags=[_tag(f"schedlab.{k}", v) for k, v in outcome.info.items()])
    finally:
        tracker.end_cell(run_id, "FAILED", err)
    return str(outcome).strip().splitlines()[0] if str(outcome).strip() else type(outcome).__name__


def _record_success(tracker: Tracker, run_id: str, spec: CellSpec, res: CellResult, bounds: DictConfig) -> list[str]:
    """Log a finished cell and its validity verdict (tag ``schedlab.valid`` + ``summary.json``);
    return why it is invalid ([] = valid)."""
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res.summary.setdefault("num_trace_requests", float(len(spec.requests)))
    judged = verdict(res.summary, bounds)
    tracker.log_result(run_id, {**res.summary, "cell_wall_s": res.wall_s}, res.timeseries)
    tracker.set_validity(run_id, judged["reasons"])
    save_parquet(res.records, out / "requests.parquet")
    (out / "summary.json").write_text(
        json.dumps({**res.summary, "validity": judged}, indent=2, sort_keys=True, default=str)
    )
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
    return judged["reasons"]


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


def _read_back(tracker: Tracker, run_id: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Per-request frame and time series of a recorded run."""
    records = ts = None
    with tempfile.TemporaryDirectory() as d:
        p = tracker.download(run_id, "requests.parquet", d)
        if p:
            records = records_frame(load_records(p))
        p = tracker.download(run_id, "timeseries.parquet", d)
        if p:
            ts = pd.read_parquet(p)
    return records, ts


def _usable(cfg: DictConfig):
    """Whether a FINISHED run may stand for its cell: valid under today's bounds, or invalid_ok."""
    return lambda run: cfg.invalid_ok or not invalid_reasons(run.data.metrics, cfg.validity)


def experiment_cells(tracker: Tracker, cfg: DictConfig, order: Sequence[str], cache: dict) -> list[CellData]:
    """Every cell of the experiment found in MLflow (any invocation, any backend), one per cell key:
    its newest usable FINISHED run, else its newest FINISHED run, else its newest run. ``order``:
    cell keys shown first; ``cache``: run id -> (records, time series) already in memory."""
    usable = _usable(cfg)
    best: dict[str, object] = {}
    attempts: Counter = Counter()
    rank = lambda r: (r.info.status == "FINISHED" and usable(r), r.info.status == "FINISHED")  # noqa: E731
    for run in tracker.cell_runs():  # newest first: a later run only wins by rank
        key = run.data.tags.get("schedlab.cell_key", run.info.run_id)
        attempts[key] += 1
        if key not in best or rank(run) > rank(best[key]):
            best[key] = run
    keys = [k for k in order if k in best] + sorted(set(best) - set(order), key=lambda k: best[k].info.start_time)
    cells = []
    for key in keys:
        run = best[key]
        summary = {k: v for k, v in run.data.metrics.items() if not k.startswith("timeseries/")}
        finished = run.info.status == "FINISHED"
        reasons = invalid_reasons(summary, cfg.validity) if finished else []
        c = CellData(label=run.info.run_name or key, status=run.info.status, coords=run_coords(run),
                     config=run_identity(run), summary=summary, run_id=run.info.run_id, key=key, reasons=reasons,
                     in_table=finished and (not reasons or bool(cfg.invalid_ok)), attempts=attempts[key])  # fmt: skip
        if not finished:
            c.reasons = [(run.data.tags.get("schedlab.error", c.status).strip().splitlines() or [c.status])[0][:300]]
        if c.in_table:
            c.records, c.timeseries = cache.get(c.run_id) or _read_back(tracker, c.run_id)
        cells.append(c)
    label_cells(cells, cfg.compare_by)
    return cells


def run_experiment(cfg: DictConfig, task_overrides: Sequence[str], console: Console | None = None) -> ExperimentResult:
    """Plan, validate, run and report a grid. SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt``
    after every server is stopped and every open run (cells and parent) is marked KILLED."""
    console = console or Console(soft_wrap=True)  # long result lines stay one line in logs
    try:
        cells = plan_cells(cfg, task_overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"grid: {e}") from None
    if cfg.get("analysis"):
        analysis_function(cfg.analysis)  # a typo fails now, not after the grid ran
    if cfg.validity.retries < 0:
        raise ConfigError(f"validity.retries={cfg.validity.retries}: must be >= 0 (0 = never re-run a disturbed cell)")
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
    usable = _usable(cfg)
    done_runs = {} if cfg.force else {c.key: r for c in cells if (r := tracker.finished_run(c, usable))}
    todo = [s for s in specs if s.key not in done_runs]
    console.print(
        f"[bold]{cfg.experiment_name}[/]: {len(cells)} cells on backend [cyan]{cfg.backend.name}[/], "
        f"{len(todo)} to run, {len(done_runs)} already FINISHED"
        + (" (skipped; force=true re-runs them)" if done_runs else "")
        + (" (a cell's invalid or failed runs are re-run)" if todo and not cfg.force else "")
    )
    console.print(f"MLflow: {tracker.tracking_uri}  experiment {cfg.experiment_name!r}  parent run {parent_id}")

    cache: dict[str, tuple] = {}  # run id -> (records, time series) of this invocation's cells
    status: dict[str, tuple[str, str | None, float]] = {}  # key -> (status, run_id, wall_s)
    _run_cells(cfg, by_key, todo, tracker, cache, status, console)
    for key, run in done_runs.items():
        status[key] = ("SKIPPED", run.info.run_id, 0.0)
    return _report_grid(cfg, cells, tracker, parent_id, exp_dir, cache, status, len(done_runs), console)


def _run_cells(cfg: DictConfig, by_key: dict[str, Cell], todo: list[CellSpec], tracker: Tracker, cache: dict,
               status: dict, console: Console) -> None:  # fmt: skip
    """Run ``todo`` on the backend, recording each cell as it ends; cells only the machine made invalid
    run again, up to ``validity.retries`` times. On a signal: stop every server, mark open runs KILLED."""
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
            for attempt in range(1 + cfg.validity.retries):
                if attempt:
                    gp.add_cells(len(todo))
                    gp.print(f"[yellow]running {len(todo)} disturbed cell(s) again (retry {attempt} of "
                             f"validity.retries={cfg.validity.retries}); the disturbed runs stay in MLflow, "
                             f"marked invalid[/]")
                disturbed = set()
                for spec, outcome in backend.map_cells(todo, started):
                    if _finish_cell(spec, outcome, running.pop(spec.key), tracker, cfg, cache, status, gp):
                        disturbed.add(spec.key)
                todo = [s for s in todo if s.key in disturbed]
                if not todo:
                    break
        except KeyboardInterrupt as e:
            with signals_ignored():  # a second signal must not cut the clean-up short
                gp.print(f"[red]interrupted ({signal_name(e)}): stopping servers[/]")
                backend.stop_all()
                tracker.kill_open(f"interrupted ({signal_name(e)})")
            raise
        finally:
            backend.close()


def _report_grid(cfg: DictConfig, cells: list[Cell], tracker: Tracker, parent_id: str, exp_dir: Path, cache: dict,
                 status: dict, num_skipped: int, console: Console) -> ExperimentResult:  # fmt: skip
    """The comparison table, cells.csv and report.html over every cell of the experiment in MLflow
    (not only this invocation's), the parent run's counts, and the closing lines."""
    all_cells = experiment_cells(tracker, cfg, [c.key for c in cells], cache)
    invalid = sum(1 for c in all_cells if c.run_id in cache and not c.valid)
    table = _report(cfg, tracker, all_cells, exp_dir, console)
    _write_cells_csv(all_cells, status, exp_dir / "cells.csv")
    tracker.log_artifact(parent_id, exp_dir / "cells.csv")
    tracker.log_artifact(parent_id, write_report(exp_dir / "report.html", cfg, table, all_cells, exp_dir, tracker))
    failed = sum(1 for s, _, _ in status.values() if s == "FAILED")
    finished = sum(1 for s, _, _ in status.values() if s == "FINISHED")
    tracker.log_result(parent_id, {"cells_finished": finished, "cells_failed": failed,
                                   "cells_skipped": num_skipped}, None)  # fmt: skip
    tracker.end_parent("FAILED" if failed and not finished and not num_skipped else "FINISHED")
    console.print(
        f"{finished} finished ({invalid} of them invalid), {failed} failed, {num_skipped} skipped. "
        f"Results in {exp_dir} (report.html)\n"
        f"MLflow UI: mlflow ui --backend-store-uri {tracker.tracking_uri}  (then open http://127.0.0.1:5000)"
    )
    return ExperimentResult(finished, failed, num_skipped, table, exp_dir, parent_id, tracker.tracking_uri)


def _finish_cell(spec: CellSpec, outcome: object, started: tuple, tracker: Tracker, cfg: DictConfig, cache: dict,
                 status: dict, gp: GridProgress) -> bool:  # fmt: skip
    """Record one cell's outcome and print its line; True if only the machine made it invalid (re-run it)."""
    run_id, task, t0 = started
    wall = time.monotonic() - t0
    try:
        line = _record_outcome(tracker, run_id, spec, outcome, cfg.validity)
        if isinstance(outcome, CellResult):
            cache[run_id] = (records_frame(outcome.records), outcome.timeseries)
    except Exception as e:  # a recording error fails this cell only; the grid goes on
        outcome = e
        line = f"recording failed: {type(e).__name__}: {e}"
        tracker.end_cell(run_id, "FAILED", line)
    if not isinstance(outcome, CellResult):
        status[spec.key] = ("FAILED", run_id, wall)
        gp.cell_done(task, f"[red]FAILED[/] {spec.label}  {wall:.1f} s  {line[:300]}")
        return False
    status[spec.key] = ("FINISHED", run_id, wall)
    gp.cell_done(task, f"[green]FINISHED[/] {spec.label}  {wall:.1f} s  {line}")
    return not cfg.invalid_ok and only_disturbed(outcome.summary, cfg.validity)  # _record_success added num_trace_requests


def _write_cells_csv(cells: list[CellData], status: dict, path: Path) -> None:
    this_run = {rid: st for st, rid, _ in status.values() if rid}
    action = {"FINISHED": "ran", "FAILED": "ran", "SKIPPED": "reused"}
    pd.DataFrame(
        [{"cell": c.label, "key": c.key, "status": c.status, "valid": c.status == "FINISHED" and c.valid,
          "in_table": c.in_table, "reason": "; ".join(c.reasons), "compared": c.compared, "group": c.group,
          "this_invocation": action.get(this_run.get(c.run_id), ""), "run_id": c.run_id, "attempts": c.attempts,
          "wall_s": round(float(c.summary.get("cell_wall_s", float("nan"))), 2), "coords": json.dumps(c.coords)}
         for c in cells]
    ).to_csv(path, index=False)  # fmt: skip


def _report(cfg: DictConfig, tracker: Tracker, cells: list[CellData], exp_dir: Path, console: Console) -> pd.DataFrame:
    """Comparison of the table's cells (terminal, CSV, PNG, plots); the cells left out listed under it."""
    table = comparison_table(cells, cfg.compare_by, cfg.baseline)
    print_table(table, cfg.compare_by, cfg.baseline, cfg.experiment_name, console)
    left_out = [c for c in cells if not c.in_table or not c.valid]
    if left_out:
        console.print("cells not in the table" + (" or kept although invalid (invalid_ok=true)" if cfg.invalid_ok
                                                   else "") + ":", style="yellow")  # fmt: skip
        for c in left_out:
            what = "kept, invalid" if c.in_table else ("invalid" if c.status == "FINISHED" else c.status)
            console.print(f"  {c.label}: {what}: {'; '.join(c.reasons)}  (run {c.run_id})", markup=False)
    outputs = [exp_dir / f for f in ("comparison.csv", "comparison.png", "ttft_cdf.png", "latency_percentiles.png",
                                     "kv_usage_queue_length.png")]  # fmt: skip
    for p in outputs:
        p.unlink(missing_ok=True)  # never leave an earlier invocation's table beside this one
    if table.empty:
        return table
    table.to_csv(exp_dir / "comparison.csv", index=False)
    save_table_png(table, cfg.compare_by, cfg.baseline, exp_dir / "comparison.png", cfg.experiment_name)
    plot_ttft_cdf(cells, cfg.compare_by, exp_dir / "ttft_cdf.png")
    plot_latency_percentiles(cells, cfg.compare_by, exp_dir / "latency_percentiles.png")
    plot_timeseries(cells, cfg.compare_by, exp_dir / "kv_usage_queue_length.png")
    if cfg.get("analysis"):
        outputs += run_analysis(cfg.analysis, [c for c in cells if c.in_table], cfg, exp_dir, console)
    for p in outputs:
        tracker.log_artifact(tracker.parent_id, p)
    return table


def run_analysis(path: str, cells: list[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    """The experiment's own analysis (``analysis: module.function``): extra tables and plots."""
    return list(analysis_function(path)(cells, cfg, exp_dir, console))


def analysis_function(path: str):
    module, _, name = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        fn = None
    if not callable(fn):
        raise ConfigError(f"analysis: {path!r} is not an importable function (module.function)")
    return fn
