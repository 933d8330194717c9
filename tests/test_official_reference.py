"""Golden test: our model against an independent transcription of the official ProST forward pass.

One random state dict in the official GitHub key layout (tests/official_layout.py: fp16 CLIP tensors, a 64-wide
CLIP with 12 + 12 blocks, L=12, No=12, Np=28, Ne=3, D=64) is saved as an official `pytorch_model.bin.*`, loaded by
`prost.load_model` and, cast to fp32, by tests/reference_official.py. Both run in eval mode in fp32; every output
must agree to 1e-5; a second variant of the same state dict has sharpened decoder weights (see `sharpened`). Any
change of norm order, residual, 0.5/0.5 mixing, SPG pooling (CLS counted twice, pads included), frame mask window,
token-shift indices, EOT pick or activation moves the outputs by far more than that.
"""

from __future__ import annotations

import re

import pytest
import torch

import prost
from tests import reference_official as ref
from tests.official_layout import SIZES, official_state_dict

TOL = 1e-5
W = 32  # max_words of the vit-b-32 preset (MSR-VTT); n_div 7 is the preset's shift_div
CAPTIONS = [
    "a man is playing a guitar on a stage",
    "cooking",
    "two dogs run across a wide green field while a child on a red bicycle chases them and laughs loudly, "
    "then they all stop near the old wooden fence",  # longer than W - 2 tokens: truncated, no padding
    "a woman explains how to fold paper into a small crane!",
]

SHARPEN = 10.0  # the "sharp" variant scales the decoders' attention and FFN weights (std 0.02 -> 0.2)
_DECODER_MATRICES = re.compile(r"^(frame|event)_decoder\.event_decoder\.layers\.\d+\.(\w+\.in_proj_weight"
                               r"|\w+\.out_proj\.weight|linear[12]\.weight)$")


def sharpened(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys, shapes and dtypes; decoder attention/FFN matrices x SHARPEN.

    With std-0.02 weights the decoders' attention is nearly uniform and their residual branches tiny, so the frame
    decoder barely reaches the events (a swapped norm there moves them by ~1e-5 only); sharpened weights make every
    decoder path carry O(1) signal.
    """
    return {k: v * SHARPEN if _DECODER_MATRICES.match(k) else v for k, v in state.items()}


@pytest.fixture(scope="module", params=["raw", "sharp"])
def models(request, tmp_path_factory):
    state = official_state_dict(seed=0)
    if request.param == "sharp":
        state = sharpened(state)
        # 2 stacks x 2 layers x (3 attentions x 2 matrices + linear1, linear2)
        assert sum(_DECODER_MATRICES.match(k) is not None for k in state) == 2 * 2 * (3 * 2 + 2)
    path = tmp_path_factory.mktemp("official") / "pytorch_model.bin.4"
    torch.save(state, path)
    ours = prost.load_model(path)
    assert ours.config.max_words == W and ours.config.shift_div == 7
    reference = ref.OfficialProST(state, n_div=7)
    assert not ours.training and not reference.training
    return ours, reference


@pytest.fixture(scope="module")
def frames():
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, SIZES["frames"], 3, 224, 224, generator=gen)
    video[1, 9:] = 0.0  # zero-filled padding frames, as the official loader leaves them
    return video


@pytest.fixture(scope="module")
def token_ids():
    ids = torch.as_tensor(prost.tokenize(CAPTIONS, W)).long()
    lengths = (ids != 0).sum(dim=1).tolist()
    assert len(set(lengths)) == len(CAPTIONS) and max(lengths) == W  # distinct lengths, one truncated caption
    return ids


@pytest.fixture(scope="module")
def outputs(models, frames, token_ids):
    ours, reference = models
    with torch.no_grad():
        video = ours.encode_video(frames)
        text = ours.encode_text(token_ids)
        patch_feat, video_feat = reference.get_visual_output(frames)
        word_feat, text_feat = reference.get_sequence_output(*ref.official_text_inputs(token_ids))
    return video, text, (word_feat, text_feat, patch_feat, video_feat)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a - b).abs().max().item()


def test_video_prototypes_match_official(outputs):
    video, _, (_, _, patch_feat, video_feat) = outputs
    objects = torch.nn.functional.normalize(patch_feat, p=2, dim=3)  # as get_max_similarity_logits normalises
    events = torch.nn.functional.normalize(video_feat, p=2, dim=2)
    assert video.objects.shape == (2, SIZES["frames"], SIZES["objects"], SIZES["d"])
    assert video.events.shape == (2, SIZES["events"], SIZES["d"])
    err_o, err_e = _max_err(video.objects, objects), _max_err(video.events, events)
    assert err_o <= TOL and err_e <= TOL, f"objects {err_o:.2e}, events {err_e:.2e}"


def test_text_prototypes_match_official(outputs):
    _, text, (word_feat, text_feat, _, _) = outputs
    phrases = torch.nn.functional.normalize(word_feat, p=2, dim=2)
    sentence = torch.nn.functional.normalize(text_feat, p=2, dim=1)
    assert text.phrases.shape == (len(CAPTIONS), SIZES["phrases"], SIZES["d"])
    err_p, err_s = _max_err(text.phrases, phrases), _max_err(text.sentence, sentence)
    assert err_p <= TOL and err_s <= TOL, f"phrases {err_p:.2e}, sentence {err_s:.2e}"


def test_similarity_matches_official(models, outputs):
    _, reference = models
    video, text, (word_feat, text_feat, patch_feat, video_feat) = outputs
    ours = prost.similarity(text, video, beta=1.0)
    # 1) the similarity alone: the official formula applied to our own prototypes
    s_es, _, s_op, _ = ref.get_max_similarity_logits(text.phrases, text.sentence, video.objects, video.events,
                                                     SIZES["objects"])
    for name, a, b in (("s_es", ours.s_es, s_es), ("s_op", ours.s_op, s_op), ("total", ours.total, s_es + s_op)):
        assert _max_err(a, b) <= TOL, f"{name} on our prototypes: {_max_err(a, b):.2e}"
    # 2) end to end: the official similarity of the official prototypes (main metric S = S_es + 1.0 * S_op)
    s_es, _, s_op, _ = reference.get_max_similarity_logits(word_feat, text_feat, patch_feat, video_feat)
    for name, a, b in (("s_es", ours.s_es, s_es), ("s_op", ours.s_op, s_op), ("total", ours.total, s_es + s_op)):
        assert _max_err(a, b) <= TOL, f"{name} end to end: {_max_err(a, b):.2e}"
