"""A run's state on disk and in the RNGs: the starting model, train_config.json, train_state.pt, exact resume."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from prost.checkpoint import TRAIN_CONFIG_FILE, load_clip_weights, load_model, save_model
from prost.distributed import Dist
from prost.errors import ConfigError
from prost.factory import create_model
from prost.fileio import write_atomic, write_json_atomic
from prost.model.prost import ProstModel
from prost.train.config import TrainConfig

STATE_FILE = "train_state.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_rng_states(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG states, indexed by rank (a collective under DDP: all ranks call it)."""
    if world == 1:
        return [rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def build_model(config: TrainConfig) -> ProstModel:
    """The seeded starting model: `--init` checkpoint, else the preset with optional CLIP weights."""
    if config.init:
        model = load_model(config.init)
        if model.config != config.model:
            raise ConfigError(f"--init {config.init} has a different architecture than the training config")
    else:
        model = create_model(config.model, seed=config.seed)
        if config.clip_weights:
            load_clip_weights(model, config.clip_weights)
    if config.init_logit_scale is not None:
        with torch.no_grad():
            model.clip.logit_scale.fill_(config.init_logit_scale)
    return model


def write_train_config(out: Path, config: TrainConfig) -> None:
    write_json_atomic(out / TRAIN_CONFIG_FILE, config.to_dict())


def read_train_config(run: Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((run / TRAIN_CONFIG_FILE).read_text()))


def save_run(out: Path, model: ProstModel, optimizer, scheduler, scaler, rng: list[dict[str, Any]],
             position: dict[str, int]) -> None:
    """Checkpoint in our format plus everything `--resume` needs to continue exactly: optimizer, schedule, the fp16
    loss scale, and each rank's RNG states (dropout differs per rank)."""
    save_model(model, out)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "rng": rng, **position}
    write_atomic(out / STATE_FILE, lambda f: torch.save(state, f))


def read_train_state(out: Path) -> dict[str, Any]:
    """The train_state.pt of run `out` (not a model checkpoint: see `prost.checkpoint.load_state` for those)."""
    return torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)


def restore_run(out: Path, optimizer, scheduler, scaler, env: Dist) -> tuple[int, int]:
    """Load run `out`'s optimizer, schedule, loss scale and this rank's RNG states; returns (step, epoch)."""
    state = read_train_state(out)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:  # runs saved before 2026-11-28 have none
        scaler.load_state_dict(state["scaler"])
    ranks = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older runs: one process
    if len(ranks) != env.world:
        raise ConfigError(f"{out} was trained by {len(ranks)} process(es); resume it with as many, not {env.world}")
    set_rng_state(ranks[env.rank])  # this rank's own dropout stream
    return state["step"], state["epoch"]
