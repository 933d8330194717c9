"""Training (`prost train`): the official ProST recipe driven by a `TrainConfig`, resumable step for step.

Recipe (reference §2-3): loss = mean of the four InfoNCE terms over S_es and S_op (or only the S_es or S_op pair
for the `--loss es|op` ablations); AdamW (betas 0.9/0.98, eps 1e-6) with weight decay 0.2 on every parameter whose
name lacks "bias"; `clip.` parameters at lr * clip_lr_coef; warmup-cosine schedule (warmup 0.1 of the steps);
gradient clipping at 1.0 per parameter tensor, as the official BertAdam does (`--clip-mode global` clips the global
norm instead); logit scale clamped at ln(100) after every step; random batches (DistributedSampler, also for one
process); batch-global negatives across DDP ranks (torchrun: prototypes all-gathered, gradients to the local slice).
Gradient accumulation sums micro-batches that each have their own negatives.

Defaults depend on the starting point. With pretrained CLIP weights (`--clip-weights`) or `--init`, they are the
official ones: lr 1e-4, CLIP lr 1e-4 * 1e-3 = 1e-7, 5 epochs. From scratch (the tiny preset on the synthetic set)
a CLIP lr of 1e-7 would leave the towers random, so every parameter trains at lr `SCRATCH_LR` (coef 1) for
`SCRATCH_EPOCHS` epochs. Not official, off by default: `--loss combined` (InfoNCE of the served S_es + beta * S_op),
`--hard-negatives G` (batches of caption-similar groups) and `--init-logit-scale` (from scratch, the official ln(100)
start can collapse S_op to a constant: see the op ablation).

A run directory holds our checkpoint (model.safetensors + config.json, rewritten every epoch and at the end),
train_config.json, train_state.pt (optimizer, scheduler, RNG states, position; tensors and plain Python only, so it
loads with weights_only=True), metrics.jsonl and training.png. Batches depend only on (seed, epoch), and the caption
of a multi-caption video on (seed, epoch, index), so `--resume` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prost.checkpoint import load_clip_weights, load_model, save_model
from prost.config import ProstConfig, parse_overrides
from prost.data.datasets import ClipDataset, ClipLoader, clip_key, load_split
from prost.data.sampling import EpochBatches, HardNegativeSampler
from prost.distributed import AllGather, Dist, init_distributed
from prost.errors import ConfigError, DataError, TrainingError
from prost.factory import create_model, preset_config
from prost.loss import combined_loss, prost_loss, ranking_mode, score_loss
from prost.model.prost import ProstModel
from prost.model.similarity import event_sentence, object_phrase
from prost.optim import clamp_logit_scale, clip_gradients, make_optimizer

log = logging.getLogger(__name__)

LOSSES = ("full", "combined", "es", "op")
PRECISIONS = ("fp32", "bf16", "fp16")
CLIP_MODES = ("per-tensor", "global")
PRETRAINED_LR, PRETRAINED_CLIP_LR_COEF, PRETRAINED_EPOCHS = 1e-4, 1e-3, 5
SCRATCH_LR, SCRATCH_CLIP_LR_COEF, SCRATCH_EPOCHS = 1e-3, 1.0, 20
FRAME_CACHE_MAX_BYTES = 8 << 30
STATE_FILE, CONFIG_FILE = "train_state.pt", "train_config.json"
METRICS_FILE, PLOT_FILE = "metrics.jsonl", "training.png"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the data; the architecture lives in `model`, never copied here."""

    model: ProstConfig
    data: str  # dataset root
    epochs: int = SCRATCH_EPOCHS
    batch_size: int = 64  # global batch (split over DDP ranks); negatives are batch-global
    lr: float = SCRATCH_LR  # head learning rate (peak of the schedule)
    clip_lr_coef: float = SCRATCH_CLIP_LR_COEF  # `clip.` parameters train at lr * clip_lr_coef
    weight_decay: float = 0.2  # on every parameter whose name lacks "bias" (official grouping)
    warmup: float = 0.1  # fraction of the steps with a linear warmup
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    clip_mode: str = "per-tensor"  # official: each parameter tensor clipped on its own; "global": one norm
    grad_accum: int = 1  # micro-batches per optimizer step (each micro-batch has its own negatives)
    precision: str = "fp32"  # autocast dtype: fp32 (off), bf16 (CPU or CUDA), fp16 (CUDA only)
    loss: str = "full"  # full: 4 InfoNCE terms (official); combined: InfoNCE of S_es + beta*S_op; es / op: ablations
    seed: int = 0
    split: str = "train"
    val_split: str = "val"  # validated after every epoch; skipped when the split is empty
    layout: str = "auto"
    expand_captions: bool = False  # one item per (video, caption), as CLIP4Clip's MSR-VTT; off: a caption per epoch
    frame_cache: bool = True  # decode every training clip once and keep its uint8 frames in memory
    hard_negatives: int = 0  # >1: batches built from groups of this many videos with similar captions (not official)
    init_logit_scale: float | None = None  # ln(1/temperature) set before step 0; None keeps the model's ln(100)
    workers: int = 0  # decoding processes without frame_cache and for validation (0: the up-front pass uses up to 4)
    clip_weights: str | None = None  # OpenAI CLIP archive for the towers
    init: str | None = None  # checkpoint to start from (its architecture replaces the preset)
    log_every: int = 10  # optimizer steps between metrics.jsonl lines

    def __post_init__(self) -> None:
        choices = {"loss": LOSSES, "precision": PRECISIONS, "clip_mode": CLIP_MODES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name}={getattr(self, name)!r}; valid: {', '.join(valid)}")
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
        defaults = {"lr": PRETRAINED_LR, "clip_lr_coef": PRETRAINED_CLIP_LR_COEF, "epochs": PRETRAINED_EPOCHS} \
            if pretrained else {}
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


# -------------------------------------------------------------------------------------------------- loss


class Encoders(nn.Module):
    """Both towers and the temperature in one forward, so DistributedDataParallel sees every parameter use."""

    def __init__(self, model: ProstModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, token_ids: torch.Tensor):
        # logit_scale leaves through the output (a clone, which has a grad_fn), else DDP would count it as unused.
        return self.model.encode_video(frames), self.model.encode_text(token_ids), self.model.clip.logit_scale.clone()


def contrastive_loss(encoders: nn.Module, frames: torch.Tensor, token_ids: torch.Tensor, loss: str, precision: str,
                     world: int, beta: float) -> torch.Tensor:
    """The training loss of one batch; prototypes are gathered over ranks and scored in fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(frames.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        video, text, logit_scale = encoders(frames, token_ids)
    tensors = [t.float() for t in (video.objects, video.events, text.phrases, text.sentence)]
    if world > 1:
        tensors = [AllGather.apply(t) for t in tensors]  # batch-global negatives; gradients flow to the local slice
    objects, events, phrases, sentence = tensors
    if loss == "es":
        return score_loss(event_sentence(sentence, events), logit_scale)
    if loss == "op":
        return score_loss(object_phrase(phrases, objects), logit_scale)
    s_es, s_op = event_sentence(sentence, events), object_phrase(phrases, objects)
    if loss == "combined":
        return combined_loss(s_es, s_op, beta, logit_scale)
    return prost_loss(s_es, s_op, logit_scale)


# ------------------------------------------------------------------------------------------------- state


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


def rank_rng_states(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG states, indexed by rank (a collective under DDP: all ranks call it)."""
    if world == 1:
        return [rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def save_run(out: Path, model: ProstModel, optimizer, scheduler, scaler, rng: list[dict[str, Any]],
             position: dict[str, int]) -> None:
    """Checkpoint in our format plus everything `--resume` needs to continue exactly: optimizer, schedule, the fp16
    loss scale, and each rank's RNG states (dropout differs per rank)."""
    save_model(model, out)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "rng": rng, **position}
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def load_state(out: Path) -> dict[str, Any]:
    return torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------------------- data


def load_training_clips(config: TrainConfig, workers: int, env: Dist = Dist()) -> ClipDataset:
    """The training split, captions tokenized once, decoded once by `workers` processes (unreadable videos dropped,
    the same ones on every rank) and, with `frame_cache`, kept in memory as uint8 frames (the memory limit shared
    by the ranks of a machine)."""
    model = config.model
    cache_limit = FRAME_CACHE_MAX_BYTES // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    items = load_split(config.data, config.split, layout=config.layout, expand_captions=config.expand_captions)
    num_frames, image_size = model.head.num_frames, model.vision.image_size
    if config.frame_cache:
        clips = len({clip_key(item) for item in items})
        need = clips * num_frames * 3 * image_size ** 2  # uint8 bytes at most
        if need > cache_limit:
            raise ConfigError(f"the frame cache of {clips} clips would take {need / 2**30:.1f} GiB "
                              f"(limit {cache_limit / 2**30:.1f} GiB per process); train with --no-frame-cache")
    data = ClipDataset(items, num_frames, image_size, model.max_words, train=True, seed=config.seed,
                       cache_bytes=cache_limit if config.frame_cache else 0, sample_fps=model.sample_fps)
    data.preload(workers, agree=None if env.world == 1 else partial(_readable_on_every_rank, env.device))
    return data


def _readable_on_every_rank(device: torch.device, mask: np.ndarray) -> np.ndarray:
    """The clips every rank could decode (an all-reduce MIN over the ranks' readable masks)."""
    flags = torch.from_numpy(mask.astype(np.uint8)).to(device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return flags.cpu().numpy().astype(bool)


# -------------------------------------------------------------------------------------------------- loop


class MetricsLog:
    """metrics.jsonl writer (main rank only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, max_minutes: float | None = None,
          max_steps: int | None = None, threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or continue, with `resume`) the run in `out`; stops cleanly at a step boundary when the time budget
    or `max_steps` (optimizer steps since the start of the run, for interruption tests) is reached.

    `threads` sets torch's intra-op threads: on a shared CPU, one thread per process avoids OpenMP stalls (a
    resumed run matches an uninterrupted one bit for bit only with the same thread count).
    """
    started = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    env = init_distributed()
    if config.precision == "fp16" and env.device.type != "cuda":
        raise ConfigError("--precision fp16 needs CUDA (CPU autocast supports bf16); use --precision bf16 or fp32")
    if config.precision == "bf16" and env.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU has no bf16 support; use --precision fp16 or fp32")
    if config.batch_size % env.world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {env.world} ranks")
    out = Path(out)
    if not resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a run; continue it with --resume {out}, or train into another --out")
    if not resume and env.main and (out / METRICS_FILE).exists():
        log.info("%s holds the metrics of a run that never reached a checkpoint; starting over", out)
        (out / METRICS_FILE).unlink()
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    trainer = Trainer(config, out, env, resume)
    budget = None if max_minutes is None else 60.0 * max_minutes - (time.monotonic() - started)
    stopped = trainer.run(budget, max_steps, progress)
    elapsed = time.monotonic() - started
    summary = {"kind": "end", "step": trainer.step, "total_steps": trainer.total, "epoch": trainer.epoch,
               "stopped": stopped, "elapsed_s": round(elapsed, 1)}
    trainer.metrics.write(**summary)
    if env.main:
        plot_metrics(out / METRICS_FILE, out / PLOT_FILE)
        log.info("%s after %d/%d steps (%.1f min); checkpoint in %s", stopped, trainer.step, trainer.total,
                 elapsed / 60, out)
    return summary


class Trainer:
    """One run's model, data order, optimizer and position; `run` trains until done, out of time or max_steps."""

    def __init__(self, config: TrainConfig, out: Path, env: Dist, resume: bool) -> None:
        started = time.monotonic()
        self.config, self.out, self.env = config, out, env
        self.model = (load_model(out) if resume else build_model(config)).to(env.device).train()
        seed_everything(config.seed)
        self.data = load_training_clips(config, config.workers or min(4, os.cpu_count() or 1), env)
        self.local_batch = config.batch_size // env.world
        self.sampler = _sampler(self.data, config, env)
        self.steps_per_epoch = len(self.sampler) // self.local_batch // config.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.data)} training videos give no full step of batch {config.batch_size} x "
                              f"{config.grad_accum} accumulation; lower --batch-size")
        self.total = self.steps_per_epoch * config.epochs
        self.encoders: nn.Module = Encoders(self.model)
        if env.world > 1:
            self.encoders = nn.parallel.DistributedDataParallel(self.encoders, find_unused_parameters=True)
        self.optimizer, self.scheduler = make_optimizer(self.model, config, self.total)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=config.precision == "fp16")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.step = self.epoch = 0
        if resume:
            state = load_state(out)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if "scaler" in state:  # runs saved before 2026-11-28 have none
                self.scaler.load_state_dict(state["scaler"])
            ranks = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older runs: one process
            if len(ranks) != env.world:
                raise ConfigError(f"{out} was trained by {len(ranks)} process(es); resume it with as many, "
                                  f"not {env.world}")
            set_rng_state(ranks[env.rank])  # this rank's own dropout stream
            self.step, self.epoch = state["step"], state["epoch"]
        self.val_items = _val_items(config) if env.main else []
        self.metrics = MetricsLog(out / METRICS_FILE, env.main)
        self.metrics.write(kind="start", step=self.step, epoch=self.epoch, total_steps=self.total,
                           steps_per_epoch=self.steps_per_epoch, videos=len(self.data), resume=resume,
                           setup_s=round(time.monotonic() - started, 2))

    def run(self, budget_s: float | None, max_steps: int | None, progress: bool) -> str:
        """Train to the end of the schedule; returns why it stopped: complete, max_steps or time_budget."""
        from tqdm import tqdm

        started = time.monotonic()
        config, stopped = self.config, "complete"
        bar = tqdm(total=self.total, initial=self.step, disable=not (progress and self.env.main), unit="step",
                   dynamic_ncols=True, mininterval=2.0)
        window = _Window()
        while self.epoch < config.epochs and stopped == "complete":
            done = (self.step - self.epoch * self.steps_per_epoch) * config.grad_accum  # micro-batches this epoch
            step_start = time.monotonic()
            for micro, batch in enumerate(self._loader(done), start=done):
                last = (micro + 1) % config.grad_accum == 0
                loss = self._backward(batch["frames"], batch["token_ids"], last)
                window.add(loss, batch["frames"].shape[0] * self.env.world)
                if not last:
                    continue
                self._optimizer_step()
                now = time.monotonic()
                step_time, step_start = now - step_start, now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{config.batch_size * config.grad_accum / step_time:.0f}")
                if self.step % config.log_every == 0 or self.step == self.total:
                    self._log_train(window, now - started)
                if max_steps is not None and self.step >= max_steps:
                    stopped = "max_steps"
                elif budget_s is not None and now - started + 1.5 * step_time + 5.0 > budget_s:
                    stopped = "time_budget"  # the next step (and the final save) would overrun the budget
                if stopped != "complete":
                    break
            else:
                self.epoch += 1
                if self.val_items:
                    _validate(self.model, self.val_items, config, self.metrics, self.step, self.epoch)
            rng = rank_rng_states(self.env.world)
            if self.env.main:
                save_run(self.out, self.model, self.optimizer, self.scheduler, self.scaler, rng,
                         {"step": self.step, "epoch": self.epoch})
            if self.env.world > 1:
                dist.barrier()
        bar.close()
        return stopped

    def _loader(self, done: int) -> ClipLoader:
        """This epoch's micro-batches from number `done` on; the order depends only on (seed, epoch)."""
        self.sampler.set_epoch(self.epoch)
        self.data.set_epoch(self.epoch)
        batches = EpochBatches(self.sampler, self.local_batch, done, self.steps_per_epoch * self.config.grad_accum)
        # An explicit generator keeps the loader from drawing its base seed from the global RNG (dropout's).
        return ClipLoader(
            self.data, batch_sampler=batches, num_workers=0 if self.config.frame_cache else self.config.workers,
            generator=torch.Generator().manual_seed(self.config.seed * 1000 + self.epoch))

    def _backward(self, frames: torch.Tensor, token_ids: torch.Tensor, last: bool) -> float:
        """Loss and gradients of one micro-batch; DDP syncs gradients only on the last one of a step."""
        config, env = self.config, self.env
        sync = contextlib.nullcontext() if last or env.world == 1 else self.encoders.no_sync()
        with sync:
            loss = contrastive_loss(self.encoders, frames.to(env.device), token_ids.to(env.device), config.loss,
                                    config.precision, env.world, config.model.beta)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"the loss is {value} in step {self.step + 1} (epoch {self.epoch + 1}): training "
                                    f"diverged, and no checkpoint was written after it; lower --lr, keep --grad-clip "
                                    f"on, or train with --precision fp32")
            self.scaler.scale(loss / config.grad_accum).backward()
        return value

    def _optimizer_step(self) -> None:
        """Clip, step, schedule, clamp the temperature: the official order."""
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.params, self.config.grad_clip, self.config.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(self.model)
        self.step += 1

    def _log_train(self, window: _Window, elapsed: float) -> None:
        lrs = {g["group"]: g["lr"] for g in self.optimizer.param_groups}
        self.metrics.write(kind="train", step=self.step, epoch=self.epoch, loss=window.mean_loss(),
                           lr=lrs.get("head_decay"), clip_lr=lrs.get("clip_decay"),
                           logit_scale=self.model.clip.logit_scale.exp().item(), clips_per_s=window.rate(),
                           elapsed_s=round(elapsed, 1))
        window.reset()


class _Window:
    """Loss and throughput since the last metrics line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses, self.clips, self.start = [], 0, time.monotonic()

    def add(self, loss: float, clips: int) -> None:
        self.losses.append(loss)
        self.clips += clips

    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def rate(self) -> float:
        return self.clips / max(time.monotonic() - self.start, 1e-9)


def _sampler(data: ClipDataset, config: TrainConfig, env: Dist) -> torch.utils.data.Sampler:
    """Official random order (DistributedSampler, also for one process) or the opt-in hard-negative grouping."""
    if config.hard_negatives > 1:
        return HardNegativeSampler([list(i.captions) for i in data.items], config.hard_negatives, config.batch_size,
                                   env.world, env.rank, config.seed)
    return torch.utils.data.DistributedSampler(data, num_replicas=env.world, rank=env.rank, shuffle=True,
                                               seed=config.seed, drop_last=True)


def _val_items(config: TrainConfig) -> list:
    try:
        return load_split(config.data, config.val_split, layout=config.layout)
    except DataError as exc:
        log.warning("no validation (%s)", exc)
        return []


def _validate(model: ProstModel, items: list, config: TrainConfig, metrics: MetricsLog, step: int, epoch: int) -> None:
    """Validation R@1 of the trained similarity; a run ranked by the full score also logs S_es-only and S_op-only R@1."""
    from prost.evaluate import evaluate

    mode = ranking_mode(config.loss)
    result = evaluate(model, items, mode=mode, workers=config.workers, beta_sweep=mode == "full")
    branches = {m: r["t2v"]["R@1"] for m, r in result.get("ablations", {}).items()}
    metrics.write(kind="val", step=step, epoch=epoch, split=config.val_split, mode=mode, loss=config.loss,
                  t2v=result["t2v"], v2t=result["v2t"], **({"branch_t2v_r1": branches} if branches else {}))
    log.info("epoch %d step %d: %s t2v R@1 %.1f R@5 %.1f, v2t R@1 %.1f%s", epoch, step, config.val_split,
             result["t2v"]["R@1"], result["t2v"]["R@5"], result["v2t"]["R@1"],
             "".join(f", S_{m} only t2v R@1 {r:.1f}" for m, r in branches.items()))


def plot_metrics(metrics_path: Path, out: Path) -> None:
    """Training loss and validation R@1 against the optimizer step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["t2v"]["R@1"] for r in val], "o-", color="tab:red",
                 label="val t2v R@1")
        ax2.set_ylabel("validation t2v R@1 (%)", color="tab:red")
    ax.set_title(f"{metrics_path.parent.name}: training loss and validation R@1")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- CLI

def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a ProST model (official recipe; resumable)")
    p.add_argument("--data", help="dataset root (e.g. the output of `prost data synth`)")
    p.add_argument("--preset", default="tiny", help="architecture preset name or JSON path (default: tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="architecture override, repeatable")
    p.add_argument("--out", help="run directory")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where its last checkpoint stopped")
    p.add_argument("--epochs", type=int, help=f"default {SCRATCH_EPOCHS} from scratch, {PRETRAINED_EPOCHS} pretrained")
    p.add_argument("--batch-size", type=int, help="global batch (default 64)")
    p.add_argument("--lr", type=float, help=f"peak lr (default {SCRATCH_LR:g} scratch, {PRETRAINED_LR:g} pretrained)")
    p.add_argument("--clip-lr-coef", type=float,
                   help=f"CLIP lr = lr * coef (default {SCRATCH_CLIP_LR_COEF:g} scratch, "
                   f"{PRETRAINED_CLIP_LR_COEF:g} pretrained)")
    p.add_argument("--weight-decay", type=float, help="default 0.2")
    p.add_argument("--warmup", type=float, help="warmup fraction (default 0.1)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (default 1.0; 0: off)")
    p.add_argument("--clip-mode", choices=CLIP_MODES, help="per-tensor (official, default) or global norm")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast: fp32 (default), bf16, fp16 (CUDA only)")
    p.add_argument("--loss", choices=LOSSES, help="full (default, official: four InfoNCE terms), combined (not official: "
                   "InfoNCE of the served S_es + beta*S_op), or the es / op ablation")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--val-split", help="validation split (default val)")
    p.add_argument("--layout", help="dataset layout: auto (default), jsonl, msrvtt, didemo")
    p.add_argument("--expand-captions", action="store_true", default=None,
                   help="one training item per (video, caption) pair, e.g. all 20 MSR-VTT captions (default: one "
                        "item per video, one of its captions drawn each epoch)")
    p.add_argument("--no-frame-cache", dest="frame_cache", action="store_false", default=None,
                   help="decode clips every epoch instead of keeping their frames in memory (each clip is still "
                        "decoded once up front, to drop unreadable videos before the first batch)")
    p.add_argument("--hard-negatives", type=int, metavar="G",
                   help="group each video with its G-1 most similar-captioned videos in a batch (default 0: off)")
    p.add_argument("--init-logit-scale", type=float,
                   help="initial ln(1/temperature) (default: the model's, ln(100); CLIP from scratch uses ln(1/0.07))")
    p.add_argument("--clip-weights", help="OpenAI CLIP archive (ViT-B-32.pt) for the towers")
    p.add_argument("--init", help="checkpoint to start from")
    p.add_argument("--workers", type=int, help="decoding processes (default 0; the up-front decode pass uses up to 4)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; stops at a step boundary and saves")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps of the run (then --resume)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 helps on a busy CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    runtime = {"max_minutes": args.max_minutes, "max_steps": args.max_steps, "threads": args.threads,
               "progress": not args.no_progress}
    fields = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "clip_lr_coef": args.clip_lr_coef,
              "weight_decay": args.weight_decay, "warmup": args.warmup, "grad_clip": args.grad_clip,
              "clip_mode": args.clip_mode, "grad_accum": args.grad_accum, "precision": args.precision,
              "loss": args.loss, "seed": args.seed, "hard_negatives": args.hard_negatives,
              "init_logit_scale": args.init_logit_scale, "val_split": args.val_split, "layout": args.layout,
              "expand_captions": args.expand_captions,
              "frame_cache": args.frame_cache,
              "clip_weights": args.clip_weights, "init": args.init}
    if args.resume:
        given = sorted(k for k, v in fields.items() if v is not None) + (["data"] if args.data else []) \
            + (["set"] if args.set else [])
        if given:
            raise ConfigError(f"--resume continues with the run's own configuration; drop {', '.join(given)} "
                              "(only --max-minutes, --max-steps, --workers, --threads apply)")
        run = Path(args.resume)
        if not (run / STATE_FILE).is_file():
            raise ConfigError(f"cannot resume {run}: no {STATE_FILE} (not a run directory, or no checkpoint yet)")
        config = TrainConfig.from_dict(json.loads((run / CONFIG_FILE).read_text()))
        if args.workers is not None:
            config = dataclasses.replace(config, workers=args.workers)
        train(config, run, resume=True, **runtime)
        return 0
    if not args.data or not args.out:
        raise ConfigError("prost train needs --data and --out (or --resume RUN)")
    if args.init:
        model_config = load_model(args.init).config
    else:
        model_config = preset_config(args.preset)
    if args.set:
        model_config = model_config.replace(**parse_overrides(args.set))
    config = TrainConfig.create(model_config, args.data, workers=args.workers, **fields)
    train(config, Path(args.out), **runtime)
    return 0
