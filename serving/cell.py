"""One cell as data: what a backend gets (``CellSpec``) and gives back (``CellResult``/``CellFailed``).

A ``CellSpec`` is picklable (Ray ships it to workers); ``CellProgress`` is the live-progress sink a
cell reports to. The backends that run cells live in ``orchestrator.backends``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """A cell that produced no result: server failed to start, crashed or timed out. ``records``:
    the per-request records gathered before it failed (a server dying mid-replay), else empty."""

    def __init__(self, message: str, log_path: str | None = None, log_text: str | None = None,
                 info: dict[str, str] | None = None, records: list[RequestRecord] | None = None):
        super().__init__(message)
        self.log_path, self.log_text, self.info = log_path, log_text, dict(info or {})
        self.records = list(records or [])

    def __reduce__(self):  # keep the log and records when Ray pickles the exception back to the driver
        return (CellFailed, (str(self), self.log_path, self.log_text, self.info, self.records))
