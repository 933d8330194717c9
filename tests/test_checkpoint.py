"""Loading official GitHub and ModelScope checkpoints, our format, conversion and clear failures."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import prost
from prost.checkpoint import load_clip_weights, load_model, save_model
from prost_cli.main import main as prost_main
from prost.errors import CheckpointError
from tests.official_layout import SIZES, modelscope_state_dict, official_state_dict


def encode_both(model):
    cfg = model.config
    frames = torch.randn(1, cfg.head.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        return model.encode_video(frames), model.encode_text(torch.tensor(prost.tokenize(["a dog runs"], cfg.max_words)))


@pytest.fixture(scope="module")
def official_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "pytorch_model.bin.4"
    torch.save(official_state_dict(), path)
    return path


def test_official_checkpoint_loads_with_inferred_sizes(official_bin, caplog):
    with caplog.at_level(logging.INFO, logger="prost.checkpoint"):
        model = load_model(official_bin)
    cfg = model.config
    assert (cfg.head.num_frames, cfg.head.num_objects, cfg.head.num_phrases, cfg.head.num_events) == (12, 12, 28, 3)
    assert (cfg.embed_dim, cfg.vision.width, cfg.vision.layers, cfg.text.layers) == (SIZES["d"], 64, 12, 12)
    assert cfg.vision.patch_size == 32 and cfg.vision.image_size == 224
    assert cfg.shift_div == 7 and cfg.max_words == 32 and cfg.beta == 1.0  # the vit-b-32 preset's settings
    # Dead parameters are reported in one line, by group.
    dead_lines = [r.message for r in caplog.records if "unused upstream parameters" in r.message]
    assert len(dead_lines) == 1
    for group in ("frame_prototype_weight", "transformerClip", "frame_position_embeddings", "self_attn_vis"):
        assert group in dead_lines[0]
    # fp16 CLIP weights arrive as fp32 with the same values.
    state = official_state_dict()
    assert model.clip.visual.proj.dtype == torch.float32
    assert torch.equal(model.clip.visual.proj, state["clip.visual.proj"].float())
    shifted = model.clip.visual.transformer.resblocks[10].attn.net.in_proj_weight
    assert torch.equal(shifted, state["clip.visual.transformer.resblocks.10.attn.net.in_proj_weight"].float())
    video, text = encode_both(model)
    assert video.objects.shape == (1, 12, 12, SIZES["d"]) and text.phrases.shape == (1, 28, SIZES["d"])


def test_modelscope_layout_loads_with_port_settings(tmp_path):
    (tmp_path / "configuration.json").write_text(json.dumps({"paras": {"max_words": 24, "max_frames": 12}}))
    torch.save(modelscope_state_dict(), tmp_path / "pytorch_model.bin")
    model = load_model(tmp_path)
    assert model.config.max_words == 24 and model.config.shift_div == 14 and model.config.beta == 1.5
    video, text = encode_both(model)
    assert video.events.shape == (1, 3, SIZES["d"]) and text.sentence.shape == (1, SIZES["d"])


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    state = official_state_dict()
    state["clip.visual.ln_post.weight"] = torch.ones(65)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"clip\.visual\.ln_post\.weight: checkpoint \(65,\), model \(64,\)"):
        load_model(tmp_path / "pytorch_model.bin")


def test_missing_and_unexpected_keys_are_grouped(tmp_path):
    state = official_state_dict()
    del state["event_decoder.V"]
    with pytest.raises(CheckpointError, match="missing event_decoder.V"):
        torch.save(state, tmp_path / "a.bin")
        load_model(tmp_path / "a.bin")
    state = official_state_dict()
    state["mystery.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "b.bin")
    with pytest.raises(CheckpointError, match="unexpected mystery.weight"):
        load_model(tmp_path / "b.bin")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"clip.x": torch.zeros(1), "fn": print}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(path)


def test_convert_round_trip_is_exact(official_bin, tmp_path):
    assert prost_main(["convert", "--checkpoint", str(official_bin), "--out", str(tmp_path / "ours")]) == 0
    ours = load_model(tmp_path / "ours")
    direct = load_model(official_bin)
    for (k, a), b in zip(ours.state_dict().items(), direct.state_dict().values()):
        assert torch.equal(a, b), k
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]


def test_our_format_round_trip_and_overrides(tmp_path):
    model = prost.create_model("tiny", seed=3)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, beta=1.5)
    assert loaded.config.beta == 1.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_clip_weights_initialise_only_the_towers(tmp_path):
    """A plain OpenAI-style CLIP state dict (no `clip.` prefix, unwrapped shifted blocks) initialises CLIP."""
    model = prost.create_model("tiny", seed=0)
    donor = prost.create_model("tiny", seed=1)
    clip_state = {k.removeprefix("clip.").replace(".attn.net.", ".attn."): v
                  for k, v in donor.state_dict().items() if k.startswith("clip.")}
    clip_state["input_resolution"] = torch.tensor(64)
    torch.save(clip_state, tmp_path / "clip.pt")
    head_before = model.word_prototype_weight[0].weight.clone()
    load_clip_weights(model, tmp_path / "clip.pt")
    assert torch.equal(model.clip.visual.transformer.resblocks[-1].attn.net.in_proj_weight,
                       donor.clip.visual.transformer.resblocks[-1].attn.net.in_proj_weight)
    assert torch.equal(model.word_prototype_weight[0].weight, head_before)


def test_clip_weights_that_are_not_a_state_dict_are_named(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is neither a TorchScript CLIP archive nor a state dict"):
        load_clip_weights(prost.create_model("tiny"), tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a CLIP state dict"):
        load_clip_weights(prost.create_model("tiny"), tmp_path / "list.pt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither our checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.bin")


def test_modelscope_with_an_explicit_preset(tmp_path):
    torch.save(modelscope_state_dict(), tmp_path / "pytorch_model.bin")
    model = load_model(tmp_path, preset="vit-b-32")
    assert model.config.shift_div == 14 and model.config.beta == 1.5  # the port's settings still apply


def test_shifted_blocks_are_read_from_the_wrappers(tmp_path):
    state = official_state_dict()
    for key in [k for k in state if "resblocks.10.attn.net." in k]:
        state[key.replace("attn.net.", "attn.")] = state.pop(key)  # only block 11 wrapped
    torch.save(state, tmp_path / "one.bin")
    assert load_model(tmp_path / "one.bin").config.shift_blocks == 1
    state = official_state_dict()
    for key in [k for k in state if "resblocks.3.attn." in k]:
        state[key.replace("attn.", "attn.net.")] = state.pop(key)  # a wrapper on an early block
    torch.save(state, tmp_path / "early.bin")
    with pytest.raises(CheckpointError, match=r"visual blocks \[3, 10, 11\]"):
        load_model(tmp_path / "early.bin")
