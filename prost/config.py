"""ProstConfig: the one description of a ProST architecture, stored in every checkpoint and artifact."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prost.errors import ConfigError

FRAME_MASKS = ("official", "own-frame")
PHRASE_TOKENS = ("all", "caption")  # official code: padding positions feed phrases; the paper: caption tokens


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT visual tower."""

    image_size: int = 224  # input side in pixels (square)
    patch_size: int = 32  # conv1 stride and kernel
    width: int = 768  # transformer width
    layers: int = 12  # residual blocks
    heads: int = 12  # attention heads

    @property
    def tokens(self) -> int:
        """T: CLS plus one token per patch."""
        return 1 + (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """CLIP causal text transformer."""

    vocab_size: int = 49408  # BPE vocabulary incl. SOT/EOT
    context_length: int = 77  # rows of positional_embedding (sliced to max_words)
    width: int = 512
    layers: int = 12
    heads: int = 8


@dataclass(frozen=True)
class HeadConfig:
    """ProST prototype head (spatial and temporal prototype generation)."""

    num_frames: int = 12  # L: frames per video, also the number of frame queries
    num_objects: int = 12  # No: object prototypes per frame, slot 0 = frame CLS
    num_phrases: int = 28  # Np: phrase prototypes per sentence
    num_events: int = 3  # Ne: event prototypes per video
    decoder_layers: int = 2  # depth of both decoders
    dropout: float = 0.1  # training only
    frame_mask: str = "official"  # "official": forward window; "own-frame": the paper's reading
    frame_mask_ratio: float = 0.2  # r in the official window (hard-coded 0.2 upstream)
    phrase_tokens: str = "all"  # phrases pool "all" W positions, padding included (official) or the "caption" only


@dataclass(frozen=True)
class ProstConfig:
    """Architecture and inference settings; paper-vs-code choices default to the official code."""

    embed_dim: int = 512  # D
    max_words: int = 32  # W: token positions fed to the text tower (pads contribute to phrases)
    shift_div: int = 7  # n_div of the temporal token shift (7 for B/32, 14 for the B/16 port)
    shift_blocks: int = 2  # the last N visual blocks carry the token shift
    beta: float = 1.0  # S = S_es + beta * S_op (1.0 official main metric, 1.5 ModelScope port)
    sample_fps: float | None = None  # frames kept per second before uniform sampling to L (official 1); None = all
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.head.frame_mask not in FRAME_MASKS:
            raise ConfigError(f"head.frame_mask={self.head.frame_mask!r}; valid: {', '.join(FRAME_MASKS)}")
        if self.head.phrase_tokens not in PHRASE_TOKENS:
            raise ConfigError(f"head.phrase_tokens={self.head.phrase_tokens!r}; valid: {', '.join(PHRASE_TOKENS)}")
        if self.max_words > self.text.context_length:
            raise ConfigError(f"max_words={self.max_words} exceeds text.context_length={self.text.context_length}")
        if self.head.num_objects < 2:
            raise ConfigError("head.num_objects must be >= 2 (slot 0 is the frame CLS)")
        if self.shift_blocks > self.vision.layers:
            raise ConfigError(f"shift_blocks={self.shift_blocks} exceeds vision.layers={self.vision.layers}")
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError("vision.image_size must be a multiple of vision.patch_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProstConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        nested = {"vision": VisionConfig, "text": TextConfig, "head": HeadConfig}
        kwargs = _checked(cls, data, "")
        for key, sub in nested.items():
            if key in kwargs:
                kwargs[key] = sub(**_checked(sub, kwargs[key], f"{key}."))
        return cls(**kwargs)

    def replace(self, **overrides: Any) -> ProstConfig:
        """Copy with dotted overrides, e.g. replace(**{"head.num_events": 4})."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"unknown config section {part!r} in {dotted!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown config key {dotted!r}; valid here: {', '.join(sorted(node))}")
            current = node[leaf]
            if isinstance(value, str) and not isinstance(current, str):
                value = json.loads(value)  # CLI strings: numbers, booleans, null
            node[leaf] = type(current)(value) if current is not None and value is not None else value
        return ProstConfig.from_dict(data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ProstConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc


def _checked(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or 'root'} must be an object, got {type(data).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; valid: {', '.join(prefix + k for k in sorted(valid))}")
    return dict(data)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Turn CLI `--set key=value` strings into a dict for ProstConfig.replace."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out
