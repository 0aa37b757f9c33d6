"""One real ``vllm serve`` per cell, as a child process of this machine, cells one after another
(each cell run by ``serving.runner.CellRunner``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from orchestrator.backends.base import Backend
from serving.cell import CellProgress, CellResult, CellSpec
from serving.runner import CellRunner


class VLLMLocalBackend(Backend):
    name = "vllm_local"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.runner = CellRunner()
        self.model_root = Path(cfg.results_dir).resolve() / "models"

    def run_cell(self, spec: CellSpec, progress: CellProgress) -> CellResult:
        return self.runner.run(spec, progress, self.model_root)

    def stop_all(self) -> None:
        self.runner.stop()
