"""The training loop: the loss of a batch over both towers, and `train`, which runs (or resumes) a run directory."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from prost.checkpoint import load_model
from prost.distributed import AllGather, Dist, init_distributed
from prost.errors import ConfigError, TrainingError
from prost.loss import combined_loss, prost_loss, score_loss
from prost.model.prost import ProstModel
from prost.model.similarity import event_sentence, object_phrase
from prost.optim import clamp_logit_scale, clip_gradients, make_optimizer
from prost.train.config import TrainConfig
from prost.train.data import epoch_loader, load_training_clips, make_sampler, val_items
from prost.train.report import METRICS_FILE, PLOT_FILE, LossWindow, MetricsLog, plot_metrics, validate
from prost.train.state import (STATE_FILE, build_model, rank_rng_states, restore_run, save_run, seed_everything,
                               write_train_config)

log = logging.getLogger(__name__)


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
        write_train_config(out, config)
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
        self.sampler = make_sampler(self.data, config, env)
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
            self.step, self.epoch = restore_run(out, self.optimizer, self.scheduler, self.scaler, env)
        self.val_items = val_items(config) if env.main else []
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
        window = LossWindow()
        micro_batches = self.steps_per_epoch * config.grad_accum
        while self.epoch < config.epochs and stopped == "complete":
            done = (self.step - self.epoch * self.steps_per_epoch) * config.grad_accum  # micro-batches this epoch
            step_start = time.monotonic()
            loader = epoch_loader(self.data, self.sampler, config, self.epoch, self.local_batch, done, micro_batches)
            for micro, batch in enumerate(loader, start=done):
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
                    validate(self.model, self.val_items, config, self.metrics, self.step, self.epoch)
            rng = rank_rng_states(self.env.world)
            if self.env.main:
                save_run(self.out, self.model, self.optimizer, self.scheduler, self.scaler, rng,
                         {"step": self.step, "epoch": self.epoch})
            if self.env.world > 1:
                dist.barrier()
        bar.close()
        return stopped

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

    def _log_train(self, window: LossWindow, elapsed: float) -> None:
        lrs = {g["group"]: g["lr"] for g in self.optimizer.param_groups}
        self.metrics.write(kind="train", step=self.step, epoch=self.epoch, loss=window.mean_loss(),
                           lr=lrs.get("head_decay"), clip_lr=lrs.get("clip_decay"),
                           logit_scale=self.model.clip.logit_scale.exp().item(), clips_per_s=window.rate(),
                           elapsed_s=round(elapsed, 1))
        window.reset()
