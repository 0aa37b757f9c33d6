"""Shared fixtures: the generated tiny model and helpers for real-server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.models import write_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama-architecture model (config.json + offline tokenizer), written once per session."""
    return write_model_dir("tiny", tmp_path_factory.mktemp("models"))
