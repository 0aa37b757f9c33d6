"""Step-time models from a spec: ``"roofline:<hardware>"``, ``"linear:<profile>"`` (a calibrated
profile under ``simulator/profiles/``, data written by ``simulator.calibrate``) or a dict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from simulator.linear import LinearModel
from simulator.roofline import HARDWARE, Hardware, RooflineModel
from simulator.step_model import StepTimeModel

# Calibrated step-model profiles (data written by ``simulator.calibrate``, loaded by name).
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


def load_step_model(spec: "str | dict[str, Any] | StepTimeModel") -> StepTimeModel:
    """``"roofline:h100"``, ``"linear:<profile>"`` (``simulator/profiles/<profile>.yaml`` or a path),
    or a dict: ``{"kind": "roofline", "hardware": "h100" | {...}, "step_overhead_s": ...}`` /
    ``{"kind": "linear", "c0": ..., ...}``."""
    if isinstance(spec, (RooflineModel, LinearModel)):
        return spec
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if kind == "roofline":
            return load_step_model({"kind": "roofline", "hardware": arg or "h100"})
        if kind == "linear":
            if not arg:
                raise ValueError("step model 'linear' needs a profile: 'linear:<name under simulator/profiles>'")
            path = Path(arg)
            if not path.suffix:
                path = PROFILE_DIR / f"{arg}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
                raise FileNotFoundError(f"step-model profile {arg!r} not found at {path}; known profiles: {known}")
            data = yaml.safe_load(path.read_text())
            data.setdefault("name", f"linear:{path.stem}")
            return load_step_model(data)
        raise ValueError(f"unknown step model {spec!r}; use 'roofline:<{'|'.join(HARDWARE)}>' or 'linear:<profile>'")
    if not isinstance(spec, dict):
        raise TypeError(f"step model spec must be a str or dict, got {type(spec).__name__}")
    data = dict(spec)
    kind = data.pop("kind", None)
    if kind == "roofline":
        hw = data.pop("hardware", "h100")
        if isinstance(hw, str):
            if hw not in HARDWARE:
                raise ValueError(f"unknown hardware preset {hw!r}; known: {sorted(HARDWARE)}")
            hw = HARDWARE[hw]
        else:
            hw = Hardware(**hw)
        hw_fields = {k: data.pop(k) for k in list(data) if k in Hardware.__dataclass_fields__}
        if hw_fields:
            hw = Hardware(**{**asdict(hw), **hw_fields})
        return RooflineModel(hw, **data)
    if kind == "linear":
        missing = [c for c in ("c0", "c1", "c2", "c3") if c not in data]  # c4..c6 are optional
        if missing:
            raise ValueError(f"linear step model is missing coefficients {missing}")
        return LinearModel(**data)
    raise ValueError(f"step model dict needs kind 'roofline' or 'linear', got {kind!r}")
