"""``python -m orchestrator experiment=sjf_vs_fcfs [overrides]`` (see docs/experiments.md).

Exit codes: 0 all cells FINISHED (or skipped), 1 a cell FAILED, 2 a configuration error (Hydra
could not compose the config, or a cell failed validation; no server was started), 128 + N after
signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP; every server stopped, open runs marked KILLED).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from orchestrator import config as _config  # noqa: F401  (registers the structured config schema)

EXIT_CELL_FAILED, EXIT_CONFIG = 1, 2
_composed = False  # Hydra composed the config and called main()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    global _composed
    _composed = True
    from orchestrator.experiment import ConfigError, run_experiment
    from orchestrator.signals import exit_code, signal_name

    try:
        result = run_experiment(cfg, cell_overrides(HydraConfig.get().overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt as e:
        print(f"interrupted ({signal_name(e)}); all servers stopped", file=sys.stderr)
        sys.exit(exit_code(e))
    if result.failed:
        sys.exit(EXIT_CELL_FAILED)
    return 0


def cell_overrides(overrides: DictConfig) -> list[str]:
    """The command line's overrides every cell is composed with: the task's, and the researcher's
    config directories (``hydra.searchpath=[file:///my/conf]``), which Hydra keeps among its own
    overrides; ``--config-dir`` is already on the search path of every composition."""
    return [*overrides.task, *(o for o in overrides.hydra if o.startswith("hydra.searchpath"))]


def _experiment_override(argv: list[str]) -> list[str]:
    """``+experiment=X`` -> ``experiment=X``: the root defaults list has ``experiment: null``, which
    Hydra overrides without ``+`` (with it, Hydra refuses "multiple values for experiment")."""
    return [a[1:] if a.startswith("+experiment=") else a for a in argv]


def cli() -> None:
    sys.argv = _experiment_override(sys.argv)
    try:
        main()
    except SystemExit as e:
        # Hydra reports a composition error (unknown group option, bad override, wrong type) and exits 1,
        # the code of a failed cell: a config that never ran is a usage error.
        if e.code == 1 and not _composed:
            sys.exit(EXIT_CONFIG)
        raise
    except Exception:  # HYDRA_FULL_ERROR=1 re-raises composition errors
        if not _composed:
            import traceback

            traceback.print_exc()
            sys.exit(EXIT_CONFIG)
        raise


if __name__ == "__main__":
    cli()
