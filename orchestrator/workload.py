"""Turn a ``conf/workload`` entry into the materialized requests of a cell.

Every step is a ``workloads`` function (loader or ``synthetic``, ``truncate``, ``with_rate``,
``time_scale``, ``clip_lengths``, ``materialize``); this module only maps config keys onto them and
checks loader arguments against the function's signature so a typo fails naming the key.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

import workloads
from serving.paths import REPO_ROOT
from workloads import LOADERS, SAMPLES
from workloads.trace import Request



# Seeded generators (the rest of ``workload.loader`` names trace formats of workloads.LOADERS).
GENERATORS: dict[str, Callable[..., list[Request]]] = {"synthetic": workloads.synthetic, "multi_turn": workloads.multi_turn}


class WorkloadConfigError(ValueError):
    pass


def resolve_path(path: str) -> Path:
    """Relative to the current directory, else to the repository (so samples work from anywhere)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve() if (REPO_ROOT / p).exists() else p.resolve()


def _check_kwargs(fn: Callable, kwargs: dict[str, Any], where: str) -> None:
    params = inspect.signature(fn).parameters
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in accepted:
            raise WorkloadConfigError(f"{where}: unknown key {key!r}; accepted: {', '.join(accepted)}")


def load_requests(w: DictConfig, seed: int, model_dir: str | Path | None, max_model_len: int) -> list[Request]:
    """Requests of a workload config (not yet materialized: no token ids)."""
    args = OmegaConf.to_container(w.args, resolve=True) or {}
    if w.num_requests is not None and w.num_requests < 0:
        raise WorkloadConfigError(f"workload.num_requests: must be >= 0, got {w.num_requests}")
    if w.loader in GENERATORS:
        kwargs = {
            "num_requests": w.num_requests if w.num_requests is not None else 100,
            "rate": w.rate if w.rate is not None else math.inf,
            "arrival": w.arrival or "poisson",
            "cv": w.cv,
            "seed": seed,
        }
        for k in args:
            if k in kwargs:
                raise WorkloadConfigError(f"workload.args.{k}: set it as workload.{k} instead")
        _check_kwargs(GENERATORS[w.loader], args, f"workload.args ({w.loader})")
        trace = GENERATORS[w.loader](**kwargs, **args)
    elif w.loader in LOADERS:
        path = resolve_path(w.path) if w.path else SAMPLES.get(w.loader)
        if path is None:
            raise WorkloadConfigError(f"workload.path: the {w.loader!r} loader needs a trace file")
        if not Path(path).is_file():
            raise WorkloadConfigError(f"workload.path: trace file {str(path)!r} does not exist")
        _check_kwargs(LOADERS[w.loader], args, f"workload.args ({w.loader} loader)")
        if w.loader == "sharegpt" and "model_dir" in inspect.signature(LOADERS[w.loader]).parameters:
            args.setdefault("model_dir", model_dir)
        trace = workloads.load_trace(w.loader, path, **args)
        if not trace:
            raise WorkloadConfigError(f"workload.path: trace file {str(path)!r} has no requests")
        if w.num_requests is not None or w.duration_s is not None:
            trace = workloads.truncate(trace, w.num_requests, w.duration_s)
        if w.rate is not None:
            trace = workloads.with_rate(trace, w.rate, arrival=w.arrival, cv=w.cv, seed=seed)
    else:
        raise WorkloadConfigError(
            f"workload.loader: unknown loader {w.loader!r}; known: {', '.join(sorted(GENERATORS) + sorted(LOADERS))}"
        )
    if w.loader in GENERATORS and w.duration_s is not None:
        trace = workloads.truncate(trace, None, w.duration_s)
    if w.time_scale is not None:
        trace = workloads.time_scale(trace, w.time_scale)
    trace = workloads.clip_lengths(
        trace, max_model_len, max_prompt_len=w.max_prompt_len, max_output_len=w.max_output_len
    )
    if not trace:
        raise WorkloadConfigError(f"workload {w.loader!r} has no requests after num_requests/duration_s")
    return list(trace)


def build_requests(w: DictConfig, seed: int, model_dir: str | Path, max_model_len: int) -> list[Request]:
    """Requests with exact-length token-id prompts (shared prefixes made real) for ``model_dir``."""
    reqs = load_requests(w, seed, model_dir, max_model_len)
    workloads.materialize(reqs, model_dir, seed=seed)
    return reqs
