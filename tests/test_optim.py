"""Optimisation recipe: schedule, parameter groups, gradient clipping, logit-scale clamp."""

import math

import pytest
import torch

from prost.errors import ConfigError
from prost.factory import create_model
from prost.loss import MAX_LOGIT_SCALE
from prost.optim import clamp_logit_scale, clip_gradients, make_optimizer, parameter_groups, warmup_cosine
from prost.train import TrainConfig


def test_warmup_cosine_matches_the_official_formula():
    assert warmup_cosine(0.0) == 0.0
    assert warmup_cosine(0.05) == pytest.approx(0.5)
    assert warmup_cosine(0.099) == pytest.approx(0.99)
    assert warmup_cosine(0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))  # 0.9755: official jump
    assert warmup_cosine(0.5) == pytest.approx(0.5)
    assert warmup_cosine(1.0) == pytest.approx(0.0)


def test_scheduler_applies_the_schedule_to_both_learning_rates():
    model = create_model("tiny", seed=0)
    config = TrainConfig.create(model.config, "unused", lr=1e-3, clip_lr_coef=0.1)
    optimizer, scheduler = make_optimizer(model, config, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append({g["group"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert lrs[0]["head_decay"] == 0.0
    assert lrs[1]["head_decay"] == pytest.approx(1e-3 * warmup_cosine(1 / 20))
    assert lrs[10]["head_decay"] == pytest.approx(1e-3 * 0.5)
    assert lrs[10]["clip_decay"] == pytest.approx(1e-4 * 0.5)


def test_parameter_groups_follow_the_official_rules():
    model = create_model("tiny", seed=0)
    groups = {g["group"]: g for g in parameter_groups(model, lr=1e-4, clip_lr_coef=1e-3, weight_decay=0.2)}
    where = {name: key for key, g in groups.items() for name in g["names"]}
    assert where["clip.visual.conv1.weight"] == "clip_decay"
    assert where["clip.logit_scale"] == "clip_decay"  # no "bias" in the name: decayed, as officially
    assert where["clip.ln_final.weight"] == "clip_decay"  # LayerNorm weights are decayed too
    assert where["clip.ln_final.bias"] == "clip_no_decay"
    assert where["frame_decoder.V"] == "head_decay"
    assert where["patch_prototype_weight.0.bias"] == "head_no_decay"
    assert groups["clip_decay"]["lr"] == pytest.approx(1e-7) and groups["head_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["clip_no_decay"]["weight_decay"] == 0.0 and groups["head_decay"]["weight_decay"] == 0.2
    assert sorted(where) == sorted(n for n, _ in model.named_parameters())  # every parameter, exactly once


def test_gradient_clipping_per_tensor_and_global():
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(9))
    for mode in ("per-tensor", "global"):
        a.grad, b.grad = torch.full((4,), 3.0), torch.full((9,), 0.1)  # norms 6 and 0.3
        clip_gradients([a, b], 1.0, mode)
        if mode == "per-tensor":
            assert a.grad.norm() == pytest.approx(1.0) and b.grad.norm() == pytest.approx(0.3)  # b untouched
        else:
            assert torch.cat([a.grad, b.grad]).norm() == pytest.approx(1.0)
            assert a.grad[0] / b.grad[0] == pytest.approx(30.0)  # one common factor
        a.grad, b.grad = torch.full((4,), 3.0), torch.full((9,), 0.1)
        clip_gradients([a, b], 0.0, mode)  # 0 is off; torch's own clip at 0 would zero every gradient
        assert torch.equal(a.grad, torch.full((4,), 3.0)) and torch.equal(b.grad, torch.full((9,), 0.1))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="grad_clip must be >= 0"):
            TrainConfig.create(create_model("tiny", seed=0).config, "d", grad_clip=bad)


def test_logit_scale_clamp():
    model = create_model("tiny", seed=0)
    with torch.no_grad():
        model.clip.logit_scale.fill_(6.0)
    clamp_logit_scale(model)
    assert model.clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
