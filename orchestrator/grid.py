"""Expand an experiment's ``grid``/``cells`` into cells, each composed by Hydra from ``conf/``.

A cell is a list of ordinary Hydra overrides (``policy=sjf``, ``workload=azure_sample``,
``seed=1``). The product over ``grid`` keys is computed by Hydra's own BasicSweeper (what
``--multirun`` uses), and every cell config is composed with ``hydra.compose`` from the config
groups plus the command line's overrides, so there is no config merging of our own.
A key given on the command line (``policy=sjf``) pins that grid dimension to the one value.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from orchestrator.checks import measured_config
from orchestrator.config import ConfigError
from serving.paths import REPO_ROOT

# Config keys that say how to run or record a cell, or how to judge and show it, not what it
# measures: left out of the cell key, so that another tracking URI, validity bound or compared key
# still finds the finished cell. Everything else (request and cell timeouts, warm-up, engine arguments,
# workload, seeds) is part of it, and so is the plugin's source (plugin_source_hash).
_NOT_IDENTITY = ("force", "progress", "results_dir", "mlflow", "grid", "cells", "compare_by", "baseline",
                 "validity", "invalid_ok", "analysis")  # fmt: skip
# Backend keys (any backend node) that only say where a cell runs, or whether its server came up
# (a start-up timeout never changes the measurements of a cell that finished).
_BACKEND_NOT_IDENTITY = ("ray_address", "ray_num_cpus", "num_cpus_per_cell", "max_parallel", "ray_ship_code",
                         "startup_timeout_s")  # fmt: skip
_POLICIES_DIR = REPO_ROOT / "policies"


@dataclass
class Cell:
    index: int
    overrides: list[str]  # this cell's own overrides (its coordinates in the grid)
    cfg: DictConfig  # fully composed and resolved config of the cell
    key: str = ""  # deterministic hash of the measured part of cfg (resume looks it up)
    dims: dict[str, str] = field(default_factory=dict)  # grid coordinates, e.g. {"policy": "sjf"}
    # dims + command-line overrides that change the cell + config-group choices + seed: how the
    # comparison labels the cell (orchestrator.report.label_cells)
    coords: dict[str, str] = field(default_factory=dict)

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
    """``{engine: {max_num_seqs: [4, 8]}}`` or ``{"engine.max_num_seqs": [4, 8]}`` -> dotted key -> values."""
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
    """``experiment=x`` -> ``experiment``; ``workload.rate=2`` -> ``workload.rate``."""
    return override.split("=", 1)[0].lstrip("+~")


def expand(grid: Any, cells: Sequence[Any] = (), pinned: Sequence[str] = ()) -> list[list[str]]:
    """Override lists of every cell: each entry of ``cells`` (or, without ``cells``, one empty entry)
    x the grid product over the keys that entry does not set itself. So ``cells`` replaces the plain
    grid product; an entry ``{}`` brings it back (docs/experiments.md)."""
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


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> dotted-key strings (MLflow params; the cell's identity)."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(data) if isinstance(data, (list, dict)) else str(data)
    return out


def is_identity(key: str) -> bool:
    """Whether a dotted config key can change a cell's measurements."""
    parts = key.lstrip("+~").split(".")
    if parts[0] in _NOT_IDENTITY or parts[0] in ("experiment", "debug", "hydra"):
        return False
    return not (parts[0] == "backend" and parts[-1] in _BACKEND_NOT_IDENTITY)


def identity_config(flat: dict[str, str]) -> dict[str, str]:
    """The measured part of a flattened config (also recomputed from MLflow's ``cfg.*`` params)."""
    return {k: v for k, v in flat.items() if is_identity(k)}


@functools.lru_cache(maxsize=None)
def plugin_source_hash(policy: str, allocator: str) -> str:
    """Hash of the code the server loads for this policy and allocator: the ``policies`` package
    (PolicyScheduler, the vLLM glue, built-ins) and the files of the classes' MROs outside it (a
    researcher's own dotted path). Editing a policy re-runs its cells on resume."""
    files = set(_POLICIES_DIR.rglob("*.py"))
    try:
        from policies.registry import block_allocator_class, scheduling_policy_class

        classes = [*scheduling_policy_class(policy).__mro__, *block_allocator_class(allocator).__mro__]
    except Exception:  # noqa: BLE001 - an unknown name is reported by validation, naming the key
        classes = []
    for cls in classes:
        try:
            f = Path(inspect.getsourcefile(cls) or "")
        except TypeError:  # builtins
            continue
        if f.is_file() and "site-packages" not in f.parts:
            files.add(f.resolve())
    # Contents only (sorted digests): the same code in another checkout gives the same hash.
    h = hashlib.sha1()
    for digest in sorted(hashlib.sha1(f.read_bytes()).hexdigest() for f in files):
        h.update(digest.encode())
    return h.hexdigest()[:16]


def cell_identity(cfg: DictConfig) -> dict[str, str]:
    """Flattened measured config of a cell plus ``plugin_source_hash``."""
    out = identity_config(flatten(OmegaConf.to_container(cfg, resolve=True)))
    out["plugin_source_hash"] = plugin_source_hash(str(cfg.policy.name), str(cfg.allocator.name))
    return out


def cell_key(cfg: DictConfig) -> str:
    return hashlib.sha1(json.dumps(cell_identity(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _coords(overrides: Sequence[str], task_overrides: Sequence[str], choices: dict, cfg: DictConfig) -> dict[str, str]:
    coords = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    for o in task_overrides:
        if "=" in o and is_identity(override_key(o)):
            coords.setdefault(override_key(o), o.split("=", 1)[1])
    for group, choice in choices.items():
        if choice is not None and "/" not in group and is_identity(group):
            coords.setdefault(group, str(choice))
    coords.setdefault("seed", str(cfg.seed))
    return coords


def plan_cells(cfg: DictConfig, task_overrides: Sequence[str], config_name: str = "config") -> list[Cell]:
    """Compose one config per cell (Hydra must be initialized: inside ``@hydra.main`` or ``initialize``).

    ``task_overrides`` are the command line's overrides; cell overrides come after them, and a
    command-line key that the grid also sweeps pins that dimension instead.
    """
    pinned = [override_key(o) for o in task_overrides]
    cells = []
    for i, overrides in enumerate(expand(cfg.get("grid"), cfg.get("cells") or [], pinned)):
        ccfg = compose(config_name=config_name, overrides=[*task_overrides, *overrides], return_hydra_config=True)
        choices = OmegaConf.to_container(ccfg.hydra.runtime.choices)
        with open_dict(ccfg):
            del ccfg["hydra"]
        try:
            ccfg = measured_config(ccfg)  # resolved
        except ValueError as e:
            raise ConfigError(f"cell [{' '.join(overrides) or 'single'}]: {e}") from None
        dims = {override_key(o): o.split("=", 1)[1] for o in overrides}
        coords = _coords(overrides, task_overrides, choices, ccfg)
        cells.append(Cell(index=i, overrides=list(overrides), cfg=ccfg, key=cell_key(ccfg), dims=dims, coords=coords))
    keys = [c.key for c in cells]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        same = [c.label for c in cells if c.key in dup]
        raise ValueError(f"grid has cells with identical configs: {same}")
    return cells
