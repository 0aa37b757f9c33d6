"""Expand an experiment's ``grid``/``cells`` into cells, each composed by Hydra from ``conf/``.

A cell is a list of ordinary Hydra overrides (``policy=sjf``, ``workload=azure_sample``,
``seed=1``). The product over ``grid`` keys is computed by Hydra's own BasicSweeper (what
``--multirun`` uses), and every cell config is composed with ``hydra.compose`` from the config
groups plus the command line's overrides, so there is no config merging of our own.
A key given on the command line (``policy=sjf``) pins that grid dimension to the one value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

# Config keys that say how to run or record a cell, not what it measures: left out of the cell key
# so that, e.g., a longer timeout or another tracking URI still finds the finished cell.
_NOT_IDENTITY = ("force", "progress", "results_dir", "mlflow", "grid", "cells", "compare_by", "baseline")
_BACKEND_NOT_IDENTITY = (
    "startup_timeout_s", "cell_timeout_s", "request_timeout_s", "ray_address", "ray_num_cpus",
    "num_cpus_per_cell", "max_parallel",
)  # fmt: skip


@dataclass
class Cell:
    index: int
    overrides: list[str]  # this cell's own overrides (its coordinates in the grid)
    cfg: DictConfig  # fully composed and resolved config of the cell
    key: str = ""  # deterministic hash of the measured part of cfg (resume looks it up)
    dims: dict[str, str] = field(default_factory=dict)  # grid coordinates, e.g. {"policy": "sjf"}

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.dims.items()) or "single"


def _format_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        # Hydra override grammar accepts JSON-like flow syntax for lists and dicts.
        return json.dumps(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def flatten_grid(grid: Any, prefix: str = "") -> dict[str, list[Any]]:
    """``{model: {max_num_seqs: [4, 8]}}`` or ``{"model.max_num_seqs": [4, 8]}`` -> dotted key -> values."""
    if isinstance(grid, (DictConfig, ListConfig)):
        grid = OmegaConf.to_container(grid, resolve=True)
    out: dict[str, list[Any]] = {}
    for k, v in (grid or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_grid(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, (list, tuple)) else [v]
            if not out[key]:
                raise ValueError(f"grid key {key!r} has an empty list of values")
    return out


def override_key(override: str) -> str:
    """``+experiment=x`` -> ``experiment``; ``workload.rate=2`` -> ``workload.rate``."""
    return override.split("=", 1)[0].lstrip("+~")


def expand(grid: Any, cells: Sequence[Any] = (), pinned: Sequence[str] = ()) -> list[list[str]]:
    """Override lists of every cell: each entry of ``cells`` (or one empty entry) x the grid product
    over the keys that entry does not set itself."""
    flat = {k: v for k, v in flatten_grid(grid).items() if k not in set(pinned)}
    if isinstance(cells, (DictConfig, ListConfig)):
        cells = OmegaConf.to_container(cells, resolve=True)
    out = []
    for entry in cells or [{}]:
        fixed = {k: v[0] for k, v in flatten_grid(entry).items() if k not in set(pinned)}
        sweeps = [f"{k}={','.join(_format_value(x) for x in vals)}" for k, vals in flat.items() if k not in fixed]
        (product,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(sweeps), None)
        out += [[f"{k}={_format_value(v)}" for k, v in fixed.items()] + p for p in product]
    return out


def cell_key(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=True)
    for k in _NOT_IDENTITY:
        data.pop(k, None)
    for k in _BACKEND_NOT_IDENTITY:
        data.get("backend", {}).pop(k, None)
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_cells(cfg: DictConfig, task_overrides: Sequence[str], config_name: str = "config") -> list[Cell]:
    """Compose one config per cell (Hydra must be initialized: inside ``@hydra.main`` or ``initialize``).

    ``task_overrides`` are the command line's overrides; cell overrides come after them, and a
    command-line key that the grid also sweeps pins that dimension instead.
    """
    pinned = [override_key(o) for o in task_overrides]
    cells = []
    for i, overrides in enumerate(expand(cfg.get("grid"), cfg.get("cells") or [], pinned)):
        ccfg = compose(config_name=config_name, overrides=[*task_overrides, *overrides])
        OmegaConf.resolve(ccfg)
        dims = {override_key(o): o.split("=", 1)[1] for o in overrides}
        cells.append(Cell(index=i, overrides=list(overrides), cfg=ccfg, key=cell_key(ccfg), dims=dims))
    keys = [c.key for c in cells]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        same = [c.label for c in cells if c.key in dup]
        raise ValueError(f"grid has cells with identical configs: {same}")
    return cells
