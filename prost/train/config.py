"""`TrainConfig`: every training setting, one documented field each; the `prost train` flags are generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from prost.config import ProstConfig
from prost.errors import ConfigError

LOSSES = ("full", "combined", "es", "op")
PRECISIONS = ("fp32", "bf16", "fp16")
CLIP_MODES = ("per-tensor", "global")
PRETRAINED_LR, PRETRAINED_CLIP_LR_COEF, PRETRAINED_EPOCHS = 1e-4, 1e-3, 5
SCRATCH_LR, SCRATCH_CLIP_LR_COEF, SCRATCH_EPOCHS = 1e-3, 1.0, 20
# Official recipe defaults, used when the run starts from pretrained CLIP weights or a checkpoint (`--clip-weights`,
# `--init`); from scratch a CLIP lr of 1e-7 would leave the towers random, so the field defaults are SCRATCH_*.
PRETRAINED_DEFAULTS: dict[str, Any] = {"lr": PRETRAINED_LR, "clip_lr_coef": PRETRAINED_CLIP_LR_COEF,
                                       "epochs": PRETRAINED_EPOCHS}


def _field(help: str, default: Any = dataclasses.MISSING, *, flag: bool = True, **cli: Any) -> Any:
    """A field documented by `help`; `flag=False` keeps it off the CLI; `cli` holds choices, metavar, default_help."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the data; the architecture lives in `model`, never copied here."""

    model: ProstConfig = _field("the architecture", flag=False)
    data: str = _field("dataset root (e.g. the output of `prost data synth`)")
    epochs: int = _field("training epochs", SCRATCH_EPOCHS)
    batch_size: int = _field("global batch (split over DDP ranks); negatives are batch-global", 64)
    lr: float = _field("head learning rate (peak of the schedule)", SCRATCH_LR)
    clip_lr_coef: float = _field("`clip.` parameters train at lr * clip_lr_coef", SCRATCH_CLIP_LR_COEF)
    weight_decay: float = _field('on every parameter whose name lacks "bias" (official grouping)', 0.2)
    warmup: float = _field("fraction of the steps with a linear warmup", 0.1)
    grad_clip: float = _field("max gradient norm; 0 turns clipping off", 1.0)
    clip_mode: str = _field("per-tensor (official): each parameter tensor clipped on its own; global: one norm",
                            "per-tensor", choices=CLIP_MODES)
    grad_accum: int = _field("micro-batches per optimizer step (each micro-batch has its own negatives)", 1)
    precision: str = _field("autocast dtype: fp32 (off), bf16 (CPU or CUDA), fp16 (CUDA only)", "fp32",
                            choices=PRECISIONS)
    loss: str = _field("full (official: four InfoNCE terms), combined (not official: InfoNCE of the served "
                       "S_es + beta*S_op), or the es / op ablation", "full", choices=LOSSES)
    seed: int = _field("seed of the model init, the batch order and dropout", 0)
    split: str = _field("training split", "train", flag=False)
    val_split: str = _field("split validated after every epoch; skipped when the split is empty", "val")
    layout: str = _field("dataset layout: auto, jsonl, msrvtt, didemo", "auto")
    expand_captions: bool = _field("one training item per (video, caption) pair, e.g. all 20 MSR-VTT captions, as "
                                   "CLIP4Clip; off: one item per video, one of its captions drawn each epoch", False)
    frame_cache: bool = _field("keep the uint8 frames of every training clip in memory instead of decoding them "
                               "every epoch (each clip is decoded once up front either way, to drop unreadable "
                               "videos before the first batch)", True)
    hard_negatives: int = _field("group each video with its G-1 most similar-captioned videos in a batch "
                                 "(not official); 0 or 1: off", 0, metavar="G")
    init_logit_scale: float | None = _field("ln(1/temperature) set before step 0 (CLIP from scratch uses "
                                            "ln(1/0.07))", None, default_help="the model's, ln(100)")
    workers: int = _field("decoding processes without the frame cache and for validation (0: the up-front decode "
                          "pass uses up to 4)", 0)
    clip_weights: str | None = _field("OpenAI CLIP archive (ViT-B-32.pt) for the towers", None)
    init: str | None = _field("checkpoint to start from (its architecture replaces the preset)", None)
    log_every: int = _field("optimizer steps between metrics.jsonl lines", 10, flag=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            valid = f.metadata.get("choices")
            if valid and getattr(self, f.name) not in valid:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r}; valid: {', '.join(valid)}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.grad_clip >= 0:  # also rejects NaN
            raise ConfigError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup must be in [0, 1), got {self.warmup}")

    @classmethod
    def create(cls, model: ProstConfig, data: str, **fields: Any) -> TrainConfig:
        """A config with the recipe defaults for its starting point (pretrained or scratch); None means default."""
        fields = {k: v for k, v in fields.items() if v is not None}
        pretrained = bool(fields.get("clip_weights") or fields.get("init"))
        defaults = PRETRAINED_DEFAULTS if pretrained else {}
        return cls(model=model, data=str(data), **{**defaults, **fields})

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown training config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(**{**data, "model": ProstConfig.from_dict(data["model"])})


def flag_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are `prost train` flags, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `flag_fields()` field: `--batch-size` for batch_size, `--no-frame-cache` for a field on by default.
    Every argparse default is None, so that `TrainConfig.create` fills in the default of the run's starting point
    and `--resume` can tell which flags were given; the help shows the effective default."""
    hints = typing.get_type_hints(TrainConfig)
    for f in flag_fields():
        kind = _flag_type(hints[f.name])
        flag, help = "--" + f.name.replace("_", "-"), _help(f)
        if kind is bool and f.default:
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=None,
                                help=f"turn {f.name.replace('_', ' ')} off: {help}")
        elif kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=help)
        else:
            parser.add_argument(flag, dest=f.name, type=None if kind is str else kind,
                                choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"), help=help)


def config_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed value (None: not given) of every TrainConfig flag, by field name."""
    return {f.name: getattr(args, f.name) for f in flag_fields()}


def _flag_type(hint: Any) -> type:
    """The argparse type of a field annotation: int, float, str or bool; `X | None` gives X."""
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _help(f: dataclasses.Field) -> str:
    """The field's documentation plus its default; `%` escaped for argparse."""
    if "default_help" in f.metadata:
        default = f.metadata["default_help"]
    elif f.name in PRETRAINED_DEFAULTS:
        default = f"{f.default:g} from scratch, {PRETRAINED_DEFAULTS[f.name]:g} with --clip-weights or --init"
    elif isinstance(f.default, bool):
        default = "on" if f.default else "off"
    elif f.default is None or f.default is dataclasses.MISSING:
        default = None
    else:
        default = f.default
    text = f.metadata["help"] + (f" (default: {default})" if default is not None else "")
    return text.replace("%", "%%")
