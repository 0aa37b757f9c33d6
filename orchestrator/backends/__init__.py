"""Backends by name (``backend.name`` in ``conf/backend/*.yaml``), imported lazily."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from orchestrator.backends.base import Backend
from serving.cell import CellFailed, CellProgress, CellResult, CellSpec, NullProgress

BACKENDS: dict[str, str] = {
    "vllm_local": "orchestrator.backends.vllm_local.VLLMLocalBackend",
    "vllm_ray": "orchestrator.backends.vllm_ray.VLLMRayBackend",
    "sim": "orchestrator.backends.sim.SimBackend",
}

__all__ = ["BACKENDS", "Backend", "CellFailed", "CellProgress", "CellResult", "CellSpec", "NullProgress",
           "backend_class", "make_backend"]  # fmt: skip


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"backend.name: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"backend {name!r} is not available: {e}") from e


def make_backend(cfg: DictConfig) -> Backend:
    return backend_class(cfg.backend.name)(cfg)
