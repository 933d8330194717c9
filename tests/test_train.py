"""Training: recipe defaults, exact resume, the up-front decode pass, CLI checks."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from prost.config import ProstConfig
from prost.data.datasets import load_split
from prost.data.synthetic import generate
from prost.errors import ConfigError, TrainingError
from prost.factory import create_model, preset_config
from prost.loss import MAX_LOGIT_SCALE
from prost.train import (METRICS_FILE, PLOT_FILE, STATE_FILE, Encoders, TrainConfig, contrastive_loss,
                         load_training_clips, read_train_state, train)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """15 tiny synthetic videos: 4 train families (12 videos), 1 test family; no val split (val falls back to test)."""
    return generate(tmp_path_factory.mktemp("synth"), videos=15, seed=3, workers=1)


def small_config(data, **fields) -> TrainConfig:
    """The tiny preset shrunk further so that a step takes a few milliseconds; dropout stays on (RNG matters)."""
    model = preset_config("tiny").replace(**{"vision.layers": 2, "text.layers": 1, "head.num_frames": 4,
                                             "vision.image_size": 32})
    return TrainConfig.create(model, str(data), **{"epochs": 2, "batch_size": 4, "log_every": 1, **fields})


def test_recipe_defaults_depend_on_the_starting_point():
    config = ProstConfig()
    scratch = TrainConfig.create(config, "d")
    pretrained = TrainConfig.create(config, "d", clip_weights="ViT-B-32.pt")
    assert pretrained.lr == 1e-4 and pretrained.clip_lr_coef == 1e-3 and pretrained.epochs == 5
    assert scratch.clip_lr_coef == 1.0 and scratch.lr > pretrained.lr
    assert TrainConfig.create(config, "d", clip_weights="x.pt", lr=3e-4).lr == 3e-4  # explicit values win
    assert TrainConfig.from_dict(json.loads(json.dumps(scratch.to_dict()))) == scratch


def test_fp16_on_cpu_is_a_clear_error(synth, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(small_config(synth, precision="fp16"), tmp_path / "run", progress=False)


def test_expand_captions_trains_on_every_caption(synth, tmp_path):
    """Synthetic train videos carry two captions (the caption and its paraphrase): expanded, each is an item."""
    per_video = load_training_clips(small_config(synth), workers=0)
    expanded = load_training_clips(small_config(synth, expand_captions=True), workers=0)
    assert len(per_video) == 12 and len(expanded) == 24
    from prost_cli.main import main

    result = main(["train", "--data", str(synth), "--set", "vision.layers=2", "--set", "head.num_frames=4",
                   "--out", str(tmp_path / "run"), "--expand-captions", "--layout", "jsonl", "--batch-size", "4",
                   "--max-steps", "1", "--no-progress"])
    assert result == 0
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["expand_captions"] is True and saved["layout"] == "jsonl"


def test_a_diverged_loss_stops_training_with_the_reason(synth, tmp_path):
    """lr 1e4 without clipping: the loss is NaN at step 2; training stops there instead of validating NaN scores."""
    with pytest.raises(TrainingError, match=r"the loss is (nan|-?inf) in step \d+ \(epoch 1\): training diverged"):
        train(small_config(synth, lr=1e4, grad_clip=0.0, warmup=0.0), tmp_path / "run", progress=False)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(synth, tmp_path):
    """3 steps per epoch x 2 epochs; interrupt after step 4 (mid epoch 2), resume, compare every tensor."""
    config = small_config(synth, lr=5e-3)
    full = train(config, tmp_path / "full", progress=False)
    assert full["stopped"] == "complete" and full["step"] == 6
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        train(config, tmp_path / "full", progress=False)  # a fresh run would mix its metrics into this one's
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / METRICS_FILE).write_text('{"kind": "start"}\n')  # a run killed before its first checkpoint
    assert train(config, tmp_path / "died", max_steps=1, progress=False)["step"] == 1
    starts = [line for line in (tmp_path / "died" / METRICS_FILE).read_text().splitlines() if '"start"' in line]
    assert len(starts) == 1 and '"total_steps"' in starts[0]
    first = train(config, tmp_path / "split", max_steps=4, progress=False)
    shutil.copytree(tmp_path / "split", tmp_path / "old-format")
    state = read_train_state(tmp_path / "old-format")  # as saved before per-rank RNG states and the loss scale
    torch.save({**{k: v for k, v in state.items() if k != "scaler"}, "rng": state["rng"][0]},
               tmp_path / "old-format" / STATE_FILE)
    assert first["stopped"] == "max_steps" and read_train_state(tmp_path / "split")["step"] == 4
    second = train(config, tmp_path / "split", resume=True, progress=False)
    assert second["step"] == 6
    assert train(config, tmp_path / "old-format", resume=True, progress=False)["step"] == 6
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    old = load_file(str(tmp_path / "old-format" / "model.safetensors"))
    assert all(torch.equal(a[k], old[k]) for k in a)
    initial = create_model(config.model, seed=config.seed).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # training moved the weights
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    assert a["clip.logit_scale"].item() <= MAX_LOGIT_SCALE + 1e-6
    state_a, state_b = read_train_state(tmp_path / "full"), read_train_state(tmp_path / "split")
    assert len(state_a["rng"]) == 1 and torch.equal(state_a["rng"][0]["torch"], state_b["rng"][0]["torch"])
    for run in ("full", "split"):
        records = [json.loads(line) for line in (tmp_path / run / METRICS_FILE).read_text().splitlines()]
        assert {"start", "train", "val", "end"} <= {r["kind"] for r in records}
        assert (tmp_path / run / PLOT_FILE).stat().st_size > 0 and (tmp_path / run / STATE_FILE).is_file()


def test_cli_train_then_resume_rejects_changed_settings(synth, tmp_path):
    from prost_cli.main import main

    run = tmp_path / "cli"
    assert main(["train", "--data", str(synth), "--out", str(run), "--epochs", "1", "--batch-size", "6",
                 "--loss", "es", "--set", "vision.layers=2", "--set", "head.num_frames=4", "--no-progress"]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["loss"] == "es" and saved["model"]["vision"]["layers"] == 2 and saved["batch_size"] == 6
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 1  # a ProstError, printed as one line
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # already complete: nothing to do


def test_combined_loss_trains_both_branches_and_ranks_by_the_full_score(synth, tmp_path):
    from prost.evaluate import trained_mode

    config = small_config(synth, loss="combined", epochs=1)
    train(config, tmp_path / "run", progress=False)
    train(small_config(synth, epochs=1), tmp_path / "official", progress=False)
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    official = load_file(str(tmp_path / "official" / "model.safetensors"))
    initial = create_model(config.model, seed=config.seed).state_dict()
    for branch in ("patch_prototype_weight.2.weight", "word_prototype_weight.2.weight", "event_decoder.V"):
        assert not torch.equal(trained[branch], initial[branch]), branch
        assert not torch.equal(trained[branch], official[branch]), branch  # another loss, other gradients
    assert trained_mode(tmp_path / "run") == "full"
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"][-1]
    assert val["mode"] == "full" and val["loss"] == "combined" and set(val["branch_t2v_r1"]) == {"es", "op"}


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_combined_loss_reaches_s_op_through_beta(beta):
    """S_op's prototype weights get a gradient from the combined loss exactly when beta weighs S_op in."""
    config = preset_config("tiny").replace(**{"vision.layers": 2, "text.layers": 1, "head.num_frames": 4,
                                              "vision.image_size": 32})
    model = create_model(config, seed=0)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 4, 3, 32, 32, generator=g)
    ids = torch.zeros(3, config.max_words, dtype=torch.long)
    ids[:, :6] = torch.randint(1, 1000, (3, 6), generator=g)
    contrastive_loss(Encoders(model), frames, ids, "combined", "fp32", 1, beta).backward()
    grad = model.word_prototype_weight[2].weight.grad
    assert model.event_decoder.V.grad.abs().sum() > 0
    assert (grad is not None and grad.abs().sum() > 0) == (beta > 0)


def test_training_drops_unreadable_videos_up_front_with_and_without_the_frame_cache(tmp_path):
    root = generate(tmp_path / "synth", videos=12, seed=3, workers=1)
    items = load_split(root, "train")
    items[0].path.write_bytes(b"not a video")
    for frame_cache in (True, False):
        data = load_training_clips(small_config(root, frame_cache=frame_cache), workers=0)
        assert [item.path for item in data.items] == [item.path for item in items[1:]]
        assert len(data.cache) == (len(items) - 1 if frame_cache else 0)
