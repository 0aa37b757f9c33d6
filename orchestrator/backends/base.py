"""The backend interface: how cells (a server config + a workload each) become measurements.

A backend gets ``CellSpec``s and returns a ``CellResult`` per cell, or raises ``CellFailed``
(start-up failure, crash, timeout) carrying the server log (types in ``serving.cell``).
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

from typing import Callable, Iterable, Iterator

from omegaconf import DictConfig

from serving.cell import CellProgress, CellResult, CellSpec


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
