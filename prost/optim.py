"""The official optimisation recipe: AdamW over CLIP/head and decay/no-decay parameter groups, the warmup-cosine
schedule, per-tensor (or global) gradient clipping and the logit-scale clamp applied after every step."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from prost.loss import MAX_LOGIT_SCALE
from prost.model.prost import ProstModel


class OptimizerSettings(Protocol):
    """What the optimizer reads from a config (`prost.train.TrainConfig` has these fields); optim imports no trainer."""

    @property
    def lr(self) -> float: ...
    @property
    def clip_lr_coef(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def warmup(self) -> float: ...


def warmup_cosine(progress: float, warmup: float = 0.1) -> float:
    """Official schedule factor at progress p = step / total: p / warmup while p < warmup, then 0.5 (1 + cos(pi p))."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, lr: float, clip_lr_coef: float, weight_decay: float) -> list[dict[str, Any]]:
    """Official grouping: decay unless the name contains "bias"; names containing "clip." get lr * clip_lr_coef."""
    groups: dict[tuple[bool, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(("clip." in name, "bias" not in name), []).append((name, param))
    out = []
    for (is_clip, decay), named in sorted(groups.items()):
        out.append({"params": [p for _, p in named], "names": [n for n, _ in named],
                    "lr": lr * clip_lr_coef if is_clip else lr, "weight_decay": weight_decay if decay else 0.0,
                    "group": f"{'clip' if is_clip else 'head'}_{'decay' if decay else 'no_decay'}"})
    return out


def clip_gradients(params: list[nn.Parameter], max_norm: float, mode: str) -> None:
    """Clip each tensor's gradient to `max_norm` (official, per tensor) or all of them to one global norm; 0 is off."""
    if max_norm == 0:
        return  # torch would scale every gradient by 0 / norm: a silent freeze, not "no clipping"
    grads = [p for p in params if p.grad is not None]
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(grads, max_norm)
    else:
        for param in grads:
            torch.nn.utils.clip_grad_norm_(param, max_norm)


def clamp_logit_scale(model: ProstModel) -> None:
    """Keep the learnable temperature at exp(logit_scale) <= 100, as after every official step."""
    with torch.no_grad():
        model.clip.logit_scale.clamp_(max=MAX_LOGIT_SCALE)  # official: an upper bound only


def make_optimizer(model: nn.Module, config: OptimizerSettings,
                   total_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the official parameter groups and the warmup-cosine LambdaLR over `total_steps` steps."""
    optimizer = torch.optim.AdamW(parameter_groups(model, config.lr, config.clip_lr_coef, config.weight_decay),
                                  betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step / total_steps, config.warmup))
    return optimizer, scheduler
