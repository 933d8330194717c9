"""Training recipe: schedule, parameter groups, clipping, logit-scale clamp, exact resume, CLI checks."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prost.config import ProstConfig
from prost.data.datasets import load_split
from prost.data.synthetic import generate
from prost.errors import ConfigError
from prost.factory import create_model, preset_config
from prost.loss import MAX_LOGIT_SCALE
from prost.train import (METRICS_FILE, PLOT_FILE, STATE_FILE, TrainConfig, clamp_logit_scale, clip_gradients,
                         load_state, load_training_clips, make_optimizer, parameter_groups, train, warmup_cosine)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """15 tiny synthetic videos: 4 train families (12 videos), 1 test family; no val split (val falls back to test)."""
    return generate(tmp_path_factory.mktemp("synth"), videos=15, seed=3, workers=1)


def small_config(data, **fields) -> TrainConfig:
    """The tiny preset shrunk further so that a step takes a few milliseconds; dropout stays on (RNG matters)."""
    model = preset_config("tiny").replace(**{"vision.layers": 2, "text.layers": 1, "head.num_frames": 4,
                                             "vision.image_size": 32})
    return TrainConfig.create(model, str(data), **{"epochs": 2, "batch_size": 4, "log_every": 1, **fields})


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


def test_recipe_defaults_depend_on_the_starting_point():
    config = ProstConfig()
    scratch = TrainConfig.create(config, "d")
    pretrained = TrainConfig.create(config, "d", clip_weights="ViT-B-32.pt")
    assert pretrained.lr == 1e-4 and pretrained.clip_lr_coef == 1e-3 and pretrained.epochs == 5
    assert scratch.clip_lr_coef == 1.0 and scratch.lr > pretrained.lr
    assert TrainConfig.create(config, "d", clip_weights="x.pt", lr=3e-4).lr == 3e-4  # explicit values win
    assert TrainConfig.from_dict(json.loads(json.dumps(scratch.to_dict()))) == scratch


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


def test_logit_scale_clamp():
    model = create_model("tiny", seed=0)
    with torch.no_grad():
        model.clip.logit_scale.fill_(6.0)
    clamp_logit_scale(model)
    assert model.clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)


def test_fp16_on_cpu_is_a_clear_error(synth, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(small_config(synth, precision="fp16"), tmp_path / "run", progress=False)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(synth, tmp_path):
    """3 steps per epoch x 2 epochs; interrupt after step 4 (mid epoch 2), resume, compare every tensor."""
    config = small_config(synth, lr=5e-3)
    full = train(config, tmp_path / "full", progress=False)
    assert full["stopped"] == "complete" and full["step"] == 6
    first = train(config, tmp_path / "split", max_steps=4, progress=False)
    assert first["stopped"] == "max_steps" and load_state(tmp_path / "split")["step"] == 4
    second = train(config, tmp_path / "split", resume=True, progress=False)
    assert second["step"] == 6
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    initial = create_model(config.model, seed=config.seed).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # training moved the weights
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    assert a["clip.logit_scale"].item() <= MAX_LOGIT_SCALE + 1e-6
    state_a, state_b = load_state(tmp_path / "full"), load_state(tmp_path / "split")
    assert torch.equal(state_a["rng"]["torch"], state_b["rng"]["torch"])
    for run in ("full", "split"):
        records = [json.loads(line) for line in (tmp_path / run / METRICS_FILE).read_text().splitlines()]
        assert {"start", "train", "val", "end"} <= {r["kind"] for r in records}
        assert (tmp_path / run / PLOT_FILE).stat().st_size > 0 and (tmp_path / run / STATE_FILE).is_file()


def test_cli_train_then_resume_rejects_changed_settings(synth, tmp_path):
    from prost.cli import main

    run = tmp_path / "cli"
    assert main(["train", "--data", str(synth), "--out", str(run), "--epochs", "1", "--batch-size", "6",
                 "--loss", "es", "--set", "vision.layers=2", "--set", "head.num_frames=4", "--no-progress"]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["loss"] == "es" and saved["model"]["vision"]["layers"] == 2 and saved["batch_size"] == 6
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 1  # a ProstError, printed as one line
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # already complete: nothing to do


def test_hard_negative_batches_group_similar_captions_and_split_over_ranks():
    from prost.train import HardNegativeSampler, caption_neighbours

    captions = [["a red circle moves left"], ["a blue star appears"], ["a red circle moves right"],
                ["a green square grows"], ["a blue star disappears"], ["a green square shrinks"]]
    neighbours = caption_neighbours(captions, 2)
    assert neighbours[0][0] == 2 and neighbours[1][0] == 4 and neighbours[3][0] == 5
    single = HardNegativeSampler(captions, group=2, batch_size=6, seed=1)
    order = single.global_order()
    assert sorted(order) == list(range(6))
    pairs = {frozenset(order[i:i + 2]) for i in range(0, 6, 2)}
    assert pairs == {frozenset({0, 2}), frozenset({1, 4}), frozenset({3, 5})}
    assert list(single) == order  # one rank: the whole global batch
    ranks = [HardNegativeSampler(captions, group=2, batch_size=6, world=2, rank=r, seed=1) for r in (0, 1)]
    assert list(ranks[0]) + list(ranks[1]) == order  # each rank takes its slice of the same global batch
    single.set_epoch(1)
    assert sorted(single.global_order()) == list(range(6))


def test_training_drops_unreadable_videos_up_front_with_and_without_the_frame_cache(tmp_path):
    root = generate(tmp_path / "synth", videos=12, seed=3, workers=1)
    items = load_split(root, "train")
    items[0].path.write_bytes(b"not a video")
    for frame_cache in (True, False):
        data = load_training_clips(small_config(root, frame_cache=frame_cache), workers=0)
        assert [item.path for item in data.items] == [item.path for item in items[1:]]
        assert len(data.cache) == (len(items) - 1 if frame_cache else 0)
