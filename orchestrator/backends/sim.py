"""``backend=sim``: run a cell through ``simulator.simulate`` (vLLM's real Scheduler, no server).

Same records, summary names and time series as ``vllm_local``, in seconds instead of minutes.
``backend.step_model`` picks the step-time model: ``roofline:h100`` (default), ``roofline:a100``,
``linear:cpu_tiny`` (a profile under simulator/profiles/), ... ``backend.scheduling_cost=true`` adds
the measured CPU time of vLLM's ``schedule()`` + ``update_from_output()`` to each simulated step;
``backend.warmup_replay`` (on, as for real cells) warms the simulated server for a profile with a
first-run cost per step shape.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from orchestrator.backends.base import Backend
from serving.cell import CellProgress, CellResult, CellSpec
from serving.engine import EngineConfig
from serving.models import write_model_dir


class SimBackend(Backend):
    name = "sim"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.model_root = Path(cfg.results_dir).resolve() / "models"

    def run_cell(self, spec: CellSpec, progress: CellProgress) -> CellResult:
        from simulator import load_step_model, simulate
        from workloads.metrics import summarize

        t0 = time.monotonic()
        cfg = spec.config()
        model_dir = write_model_dir(cfg.model.preset, self.model_root, dict(cfg.model.arch_overrides) or None)
        step_model = load_step_model(cfg.backend.step_model)
        progress.phase(f"simulating ({step_model.name})")
        total = len(spec.requests)
        res = simulate(
            spec.requests,
            model_dir=model_dir,
            policy=cfg.policy.name,
            policy_args=dict(cfg.policy.args),
            allocator=cfg.allocator.name,
            allocator_args=dict(cfg.allocator.args),
            step_model=step_model,
            engine=EngineConfig.of(cfg.engine).limits(),
            seed=cfg.seed,
            scheduling_cost=cfg.backend.scheduling_cost,
            warmup_replay=cfg.backend.warmup_replay,
            on_progress=lambda done, n: progress.requests(done, total, 0),
        )
        # Client metrics with the cell's SLOs (as vllm_local does), server_* from the simulation.
        summary = summarize(res.records, slo_ttft_ms=cfg.get("slo_ttft_ms"), slo_tpot_ms=cfg.get("slo_tpot_ms"))
        summary.update({k: v for k, v in res.summary.items() if k.startswith("server_")})
        summary["sim_wall_s"] = res.wall_s
        summary["warmup_required"] = 0.0  # the simulated server has no kernels to build
        return CellResult(
            records=res.records, summary=summary, timeseries=res.timeseries,
            info={"backend": "sim", "step_model": step_model.name, "sim_steps": str(res.num_steps)},
            wall_s=time.monotonic() - t0,
        )  # fmt: skip
