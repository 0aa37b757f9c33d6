"""The backend interface: how one cell (a server config + a workload) becomes measurements.

A backend gets ``CellSpec``s (picklable: Ray ships them to workers) and returns a ``CellResult``
per cell, or raises ``CellFailed`` (start-up failure, crash, timeout) carrying the server log.
``map_cells`` runs many cells; the default runs them one after another, ``vllm_ray`` in parallel.

Writing a backend (e.g. ``sim``)::

    class SimBackend(Backend):
        name = "sim"
        def run_cell(self, spec: CellSpec, progress: CellProgress) -> CellResult:
            cfg = spec.config()                 # resolved cell config (OmegaConf)
            ...                                 # spec.requests are materialized (token ids)
            return CellResult(records=..., summary=..., timeseries=...)

and add it to ``orchestrator.backends.BACKENDS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from workloads.records import RequestRecord
from workloads.trace import Request


class CellProgress(Protocol):
    """Live progress of one cell (the rich display implements it; any no-op object will do)."""

    def phase(self, text: str) -> None: ...  # e.g. "starting server", "replaying"

    def requests(self, done: int, total: int, in_flight: int) -> None: ...


class NullProgress:
    def phase(self, text: str) -> None:
        pass

    def requests(self, done: int, total: int, in_flight: int) -> None:
        pass


@dataclass
class CellSpec:
    """Everything a backend needs to run one cell, as plain picklable data."""

    key: str  # config hash (also the MLflow tag used for resume)
    label: str  # e.g. "policy=sjf workload=azure_sample seed=0"
    cfg: dict[str, Any]  # resolved cell config as a plain dict
    requests: list[Request]  # materialized (prompt_token_ids set)
    out_dir: str  # where to write server.log etc. (a local path on the node running the cell)

    def config(self) -> DictConfig:
        return OmegaConf.create(self.cfg)


@dataclass
class CellResult:
    records: list[RequestRecord]
    summary: dict[str, float]  # client metrics (workloads.metrics.summarize) + server_* metrics
    timeseries: pd.DataFrame | None = None  # t_s, num_running, num_waiting, kv_cache_usage
    log_path: str | None = None  # server log, when it is readable from the driver
    log_text: str | None = None  # server log contents, when the cell ran elsewhere (Ray)
    info: dict[str, str] = field(default_factory=dict)  # e.g. vllm_version, node, server command
    wall_s: float = 0.0  # whole cell: server start + replay + stop


class CellFailed(RuntimeError):
    """A cell that produced no result: server failed to start, crashed or timed out."""

    def __init__(self, message: str, log_path: str | None = None, log_text: str | None = None,
                 info: dict[str, str] | None = None):
        super().__init__(message)
        self.log_path, self.log_text, self.info = log_path, log_text, dict(info or {})

    def __reduce__(self):  # keep the log when Ray pickles the exception back to the driver
        return (CellFailed, (str(self), self.log_path, self.log_text, self.info))


class Backend:
    name = "base"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg  # the experiment's root config (backend settings in cfg.backend)

    def run_cell(self, spec: CellSpec, progress: CellProgress) -> CellResult:
        raise NotImplementedError

    def map_cells(
        self,
        specs: Iterable[CellSpec],
        started: Callable[[CellSpec], CellProgress],
    ) -> Iterator[tuple[CellSpec, CellResult | BaseException]]:
        """Run cells, yielding ``(spec, result or exception)`` as each ends.

        ``started(spec)`` is called when a cell begins and returns its progress sink.
        """
        for spec in specs:
            progress = started(spec)
            try:
                yield spec, self.run_cell(spec, progress)
            except Exception as e:  # one failed cell never stops the grid
                yield spec, e

    def stop_all(self) -> None:
        """Stop every server this backend started (Ctrl-C)."""

    def close(self) -> None:
        pass
