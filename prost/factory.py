"""Preset registry (JSON files in prost/presets, file stem = name) and model construction."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from prost.config import ProstConfig
from prost.errors import ConfigError
from prost.model.prost import ProstModel


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name[: -len(".json")] for p in resources.files("prost").joinpath("presets").iterdir()
                  if p.name.endswith(".json"))


def preset_config(preset: str | Path) -> ProstConfig:
    """A preset by name, or a JSON file path."""
    path = Path(preset)
    if path.suffix == ".json" and path.exists():
        return ProstConfig.load(path)
    names = list_presets()
    if str(preset) not in names:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(names)} or a path to a JSON file")
    return ProstConfig.from_dict(json.loads(resources.files("prost").joinpath(f"presets/{preset}.json").read_text()))


def create_model(preset: str | Path | ProstConfig = "tiny", *, seed: int | None = None,
                 device: str | torch.device = "cpu") -> ProstModel:
    """A randomly initialised model in eval mode; `seed` makes the weights reproducible."""
    config = preset if isinstance(preset, ProstConfig) else preset_config(preset)
    if seed is None:
        model = ProstModel(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ProstModel(config)
    return model.to(device).eval()
