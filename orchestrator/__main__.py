"""``python -m orchestrator +experiment=sjf_vs_fcfs [overrides]`` (see docs/experiments.md)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from orchestrator import config as _config  # noqa: F401  (registers the structured config schema)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from orchestrator.experiment import ConfigError, run_experiment

    try:
        result = run_experiment(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; all servers stopped", file=sys.stderr)
        sys.exit(130)
    if result.failed:
        sys.exit(1)
    return 0


if __name__ == "__main__":
    main()
