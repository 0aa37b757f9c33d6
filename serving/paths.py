"""Where this repository's code is: the one place that computes it (the server's ``PYTHONPATH`` for the
policy plugin, Ray's shipped ``working_dir``, workload paths relative to the repository)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
