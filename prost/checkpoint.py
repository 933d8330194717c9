"""Checkpoints: our format (model.safetensors + config.json), the official GitHub and ModelScope layouts, CLIP init.

Our format is a directory; `load_model` also takes an official `pytorch_model.bin*` file (CLIP in fp16, shifted
blocks under `attn.net.`) and a ModelScope model directory (`configuration.json` + `pytorch_model.bin`), inferring
L, No, Np, Ne and the CLIP sizes from tensor shapes. Dead upstream parameters are listed in one log line and dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prost.config import ProstConfig
from prost.errors import CheckpointError
from prost.factory import preset_config
from prost.model.prost import ProstModel

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_CONFIG_FILE = "train_config.json"  # beside them in a run directory: the TrainConfig of `prost train`
MODELSCOPE_CONFIG = "configuration.json"
MODELSCOPE_WEIGHTS = "pytorch_model.bin"

# Parameters stored by the official code and the ModelScope port but never used in the forward pass.
DEAD_KEYS = re.compile(
    r"^(frame_prototype_weight\.|frame_position_embeddings\.|transformerClip\.|cross\.|similarity_dense\."
    r"|frame_decoder\.event_decoder\.layers\.\d+\.(self_attn|self_attn_vis)\."
    r"|event_decoder\.event_decoder\.layers\.\d+\.self_attn_vis\."
    r"|clip\.(input_resolution|context_length|vocab_size)$)"
)
SHIFTED_UNWRAPPED = re.compile(r"^(clip\.visual\.transformer\.resblocks\.\d+\.attn\.)(?!net\.)(.+)$")


def save_model(model: ProstModel, path: str | Path) -> Path:
    """Write our format: a directory with model.safetensors and config.json."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "prost-serve"})
    model.config.save(out / CONFIG_FILE)
    return out


def load_model(path: str | Path, *, preset: str | None = None, max_words: int | None = None,
               shift_div: int | None = None, beta: float | None = None, device: str | torch.device = "cpu") -> ProstModel:
    """Load any supported checkpoint; keyword overrides apply to settings a checkpoint cannot carry (W, n_div, beta).

    Args:
        path: our checkpoint directory, an official `pytorch_model.bin*` file, or a ModelScope model directory.
        preset: base preset for foreign checkpoints (default: by patch size, vit-b-32 or vit-b-16).
        max_words: W; pads contribute to phrase prototypes, so use the value the model was trained with.
        shift_div: n_div of the token shift (not recoverable from weights).
        beta: weight of S_op in S = S_es + beta * S_op.
    """
    path = Path(path)
    if path.suffix == ".safetensors":  # our weights file: its config is beside it, never guessed
        if not (path.parent / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is a weights file without {CONFIG_FILE} beside it; pass our checkpoint "
                                  f"directory ({WEIGHTS_FILE} + {CONFIG_FILE}), e.g. the run directory")
        if path.name != WEIGHTS_FILE:
            raise CheckpointError(f"{path}: our checkpoint directory holds its weights as {WEIGHTS_FILE} beside "
                                  f"{CONFIG_FILE}; pass the directory, with the weights under that name")
        log.info("loading the checkpoint directory %s of %s", path.parent, path.name)
        path = path.parent
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        config = ProstConfig.load(path / CONFIG_FILE)
        try:
            state = load_file(str(path / WEIGHTS_FILE))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {exc} (truncated or not a safetensors "
                                  f"file?)") from None
    else:
        state, hints = read_foreign(path)
        hinted_preset = hints.pop("preset", None)
        config = infer_config(state, preset or hinted_preset, **hints)
    overrides = {k: v for k, v in {"max_words": max_words, "shift_div": shift_div, "beta": beta}.items() if v is not None}
    if overrides:
        config = config.replace(**overrides)
    model = ProstModel(config)
    load_state(model, state, source=str(path))
    return model.to(device).eval()


def read_foreign(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an official .bin file or a ModelScope directory; returns the state dict and config hints."""
    hints: dict = {}
    if path.is_dir():
        if not (path / MODELSCOPE_WEIGHTS).is_file():
            raise CheckpointError(
                f"{path} is neither our checkpoint ({WEIGHTS_FILE} + {CONFIG_FILE}) nor a ModelScope model directory "
                f"({MODELSCOPE_WEIGHTS} + {MODELSCOPE_CONFIG})"
            )
        hints = _modelscope_hints(path / MODELSCOPE_CONFIG)
        path = path / MODELSCOPE_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-code files
        # torch's own text advises weights_only=False, which runs any code the file holds: not for unknown files
        raise CheckpointError(f"cannot read {path}: not a weights-only PyTorch file (damaged, not PyTorch, or it "
                              f"would run code to load; {type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, hints


def _modelscope_hints(config_path: Path) -> dict:
    """ModelScope `configuration.json` -> max_words and the port's settings (n_div 14, beta 1.5)."""
    hints = {"preset": "vit-b-16", "shift_div": 14, "beta": 1.5}
    if config_path.is_file():
        paras = json.loads(config_path.read_text()).get("paras", {})
        if "max_words" in paras:
            hints["max_words"] = int(paras["max_words"])
    return hints


def infer_config(state: dict[str, torch.Tensor], preset: str | None = None, **overrides) -> ProstConfig:
    """Architecture from tensor shapes: L, No, Np, Ne and every CLIP size; W and n_div come from the preset."""
    _require(state, ["clip.visual.conv1.weight", "clip.visual.positional_embedding", "clip.ln_final.weight",
                     "clip.text_projection", "clip.token_embedding.weight", "clip.positional_embedding",
                     "patch_prototype_weight.2.weight", "word_prototype_weight.2.weight", "frame_decoder.V",
                     "event_decoder.V"])
    conv = state["clip.visual.conv1.weight"]
    patch, vision_width = conv.shape[-1], conv.shape[0]
    grid = round((state["clip.visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["clip.ln_final.weight"].shape[0]
    base = preset_config(preset or ("vit-b-16" if patch == 16 else "vit-b-32"))
    sizes = {
        "embed_dim": state["clip.text_projection"].shape[1],
        "vision.patch_size": patch,
        "vision.image_size": patch * grid,
        "vision.width": vision_width,
        "vision.layers": _count_blocks(state, "clip.visual.transformer.resblocks."),
        "vision.heads": vision_width // 64,
        "text.vocab_size": state["clip.token_embedding.weight"].shape[0],
        "text.context_length": state["clip.positional_embedding"].shape[0],
        "text.width": text_width,
        "text.layers": _count_blocks(state, "clip.transformer.resblocks."),
        "text.heads": text_width // 64,
        "head.num_frames": state["frame_decoder.V"].shape[0],
        "head.num_objects": state["patch_prototype_weight.2.weight"].shape[0] + 1,
        "head.num_phrases": state["word_prototype_weight.2.weight"].shape[0],
        "head.num_events": state["event_decoder.V"].shape[0],
        "head.decoder_layers": _count_blocks(state, "event_decoder.event_decoder.layers."),
        "shift_blocks": _shifted_blocks(state, _count_blocks(state, "clip.visual.transformer.resblocks.")),
    }
    return base.replace(**sizes, **overrides)


def _require(state: dict, keys: list[str]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"not a ProST checkpoint: missing {', '.join(missing)}")


def _shifted_blocks(state: dict, layers: int) -> int:
    """How many visual blocks carry the token shift (`attn.net.` keys); they must be the last ones."""
    shifted = sorted({int(k.split(".")[4]) for k in state if k.startswith("clip.visual.transformer.resblocks.")
                      and ".attn.net." in k})
    if not shifted:
        return 2  # an unwrapped save (official test-mode remap): the official model shifts blocks 10-11
    if shifted != list(range(layers - len(shifted), layers)):
        raise CheckpointError(f"token-shift wrappers on visual blocks {shifted}; only the last blocks are supported")
    return len(shifted)


def _count_blocks(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def load_state(model: ProstModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load after casting to the model's dtype, wrapping shifted-block keys and dropping known dead keys."""
    expected = model.state_dict()
    state = _wrap_shifted_blocks(state, expected)
    dead = sorted(k for k in state if DEAD_KEYS.match(k) and k not in expected)
    if dead:
        log.info("%s: ignoring %d unused upstream parameters: %s", source, len(dead), _group(dead))
    state = {k: v for k, v in state.items() if k not in dead}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"missing {_group(missing)}" if missing else "", f"unexpected {_group(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(p for p in parts if p))
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _wrap_shifted_blocks(state: dict[str, torch.Tensor], expected: dict) -> dict[str, torch.Tensor]:
    """Map `resblocks.N.attn.X` to `resblocks.N.attn.net.X` for shifted blocks (OpenAI CLIP and test-mode saves)."""
    out = {}
    for key, value in state.items():
        match = SHIFTED_UNWRAPPED.match(key)
        wrapped = f"{match.group(1)}net.{match.group(2)}" if match else None
        if wrapped and wrapped in expected and key not in expected:
            if wrapped in state:
                continue  # a duplicate left by the official test-mode remap; the wrapped copy wins
            key = wrapped
        out[key] = value
    return out


def _group(keys: list[str], limit: int = 12) -> str:
    """Summarise keys by module: numbered components become `*`, cut after the first name that follows one."""
    groups: dict[str, int] = defaultdict(int)
    for key in keys:
        parts = re.sub(r"\.\d+(?=\.|$)", ".*", key).split(".")
        cut = next((i + 2 for i, part in enumerate(parts) if part == "*"), len(parts))
        groups[".".join(parts[:cut])] += 1
    items = [f"{prefix}.* ({n})" if n > 1 else prefix for prefix, n in sorted(groups.items())]
    return ", ".join(items[:limit]) + (f", ... {len(items) - limit} more groups" if len(items) > limit else "")


def load_clip_weights(model: ProstModel, path: str | Path) -> None:
    """Initialise the CLIP towers from an OpenAI CLIP archive (JIT `ViT-B-32.pt`, or a plain state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP weights not found: {path}")
    try:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and weights_only errors have no common base
            raise CheckpointError(f"{path} is neither a TorchScript CLIP archive nor a state dict that loads "
                                  f"without running code ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a CLIP state dict")
    clip_state = {f"clip.{k}": v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    load_state(model, {**clip_state, **head}, source=str(path))


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert an official or ModelScope checkpoint to our format")
    parser.add_argument("--checkpoint", required=True, help="official pytorch_model.bin* or ModelScope directory")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    parser.add_argument("--preset", help="base preset (default: by patch size)")
    parser.add_argument("--max-words", type=int, help="W used in training (pads contribute to phrases)")
    parser.add_argument("--shift-div", type=int, help="n_div of the temporal token shift")
    parser.add_argument("--beta", type=float, help="weight of S_op")
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint, preset=args.preset, max_words=args.max_words, shift_div=args.shift_div,
                       beta=args.beta)
    out = save_model(model, args.out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
