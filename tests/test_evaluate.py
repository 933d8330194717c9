"""Evaluation: cached encoding equals the model's own forward, metric plumbing, and `prost eval` end to end."""

import json

import numpy as np
import pytest
import torch

from prost.checkpoint import save_model
from prost.data.datasets import load_split
from prost.data.synthetic import generate
from prost.data.video import decode_video
from prost.evaluate import SWEEP_BETAS, encode_captions, encode_gallery, evaluate, report, select
from prost.factory import create_model, preset_config
from prost.metrics import TRANSDUCTIVE_LABEL, retrieval_metrics
from prost.tokenizer import tokenize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """18 synthetic videos: 15 train videos with two captions each (multi-caption queries), 3 test videos."""
    return generate(tmp_path_factory.mktemp("synth-eval"), videos=18, seed=1, workers=1)


@pytest.fixture(scope="module")
def model():
    config = preset_config("tiny").replace(**{"vision.layers": 2, "text.layers": 1, "head.num_frames": 4})
    return create_model(config, seed=0)


def test_encoding_once_and_chunked_scoring_equal_the_full_forward(synth, model):
    items = load_split(synth, "train")
    config = model.config
    frames = torch.stack([torch.from_numpy(decode_video(i.path, config.head.num_frames,
                                                        config.vision.image_size).frames) for i in items])
    texts = [c for i in items for c in i.captions]
    owner = np.array([v for v, i in enumerate(items) for _ in i.captions])
    with torch.inference_mode():
        reference = model(frames, torch.from_numpy(tokenize(texts, config.max_words)).long())  # [T, V], unchunked
    result = evaluate(model, items, beta_sweep=True, batch_size=4)
    assert result["captions"] == len(texts) > result["videos"] == len(items)
    assert result["t2v"] == retrieval_metrics(reference.total, owner)["t2v"]
    assert result["v2t"] == retrieval_metrics(reference.total, owner)["v2t"]
    assert result["ablations"]["es"]["t2v"] == retrieval_metrics(reference.s_es, owner)["t2v"]
    assert result["ablations"]["op"]["t2v"] == retrieval_metrics(reference.s_op, owner)["t2v"]
    assert [entry["beta"] for entry in result["beta_sweep"]] == list(SWEEP_BETAS)
    assert SWEEP_BETAS[0] == 0.8 and SWEEP_BETAS[-1] == 1.7


def test_gallery_encodes_each_video_once_in_order(synth, model):
    items = load_split(synth, "train", expand_captions=True)  # every video repeated once per caption
    ids, video = encode_gallery(model, items, batch_size=5)
    assert ids == list(dict.fromkeys(i.video_id for i in items))
    head = model.config.head
    assert video.objects.shape == (len(ids), head.num_frames, head.num_objects, model.config.embed_dim)
    text = encode_captions(model, ["a red circle moves left", "a blue star appears"])
    assert text.phrases.shape == (2, head.num_phrases, model.config.embed_dim)
    assert torch.allclose(text.sentence.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_modes_and_hungarian(synth, model):
    items = load_split(synth, "test")
    es = evaluate(model, items, mode="es", hungarian=True)
    full = evaluate(model, items, mode="full", beta=1.0, beta_sweep=True)
    assert es["t2v"] == full["ablations"]["es"]["t2v"] and es["beta"] is None
    assert es["hungarian"]["transductive"] is True and es["hungarian"]["label"] == TRANSDUCTIVE_LABEL
    assert "hungarian" not in full  # only behind the flag
    with pytest.raises(Exception, match="mode"):
        select(None, "both", 1.0)


def test_prost_eval_cli_writes_json(synth, model, tmp_path):
    from prost_cli.main import main

    checkpoint = save_model(model, tmp_path / "ckpt")
    out = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(synth), "--split", "test", "--beta-sweep",
                 "--hungarian", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["mode"] == "full" and result["videos"] == 3
    for direction in ("t2v", "v2t"):
        assert set(result[direction]) >= {"R@1", "R@5", "R@10", "MdR", "MnR"}
        # 3 queries: the median rank is the best one (MdR 1) exactly when at least 2 of 3 hit at rank 1.
        assert (result[direction]["MdR"] == 1.0) == (result[direction]["R@1"] > 50.0)
    assert result["hungarian"]["transductive"] is True and "transductive" in result["hungarian"]["label"]
    assert len(result["beta_sweep"]) == len(SWEEP_BETAS)


def test_gallery_decodes_as_training_and_leaves_out_unreadable_videos(synth, tmp_path, caplog):
    """sample_fps reaches the decoder (it picks other frames), and a corrupt video drops out with its captions."""
    config = preset_config("tiny").replace(**{"vision.layers": 2, "text.layers": 1, "head.num_frames": 4,
                                              "sample_fps": 2.0})
    model = create_model(config, seed=0)
    items = load_split(synth, "train")[:3]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    items[1] = type(items[1])(items[1].video_id, broken, items[1].captions)
    ids, video = encode_gallery(model, items)
    assert ids == [items[0].video_id, items[2].video_id] and "broken.mp4" in caplog.text
    expected = torch.from_numpy(decode_video(items[0].path, 4, config.vision.image_size, sample_fps=2.0).frames)
    every_frame = torch.from_numpy(decode_video(items[0].path, 4, config.vision.image_size).frames)
    assert not torch.equal(expected, every_frame)  # 2 fps of the 8 fps clip picks other frames
    with torch.inference_mode():
        assert torch.allclose(video.objects[0], model.encode_video(expected[None]).objects[0], atol=1e-6)
    result = evaluate(model, items, gallery=(ids, video))
    assert result["videos"] == 2 and result["captions"] == len(items[0].captions) + len(items[2].captions)
    assert result["left_out"] == {"videos": 1, "captions": len(items[1].captions)}
    assert "1 unreadable videos and their 2 captions are left out" in report(result)
