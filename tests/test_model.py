"""Semantics of the ProST model pinned against the official code's behaviour (prost-model.md)."""

from __future__ import annotations

import pytest
import torch

import prost
from prost.config import ProstConfig
from prost.errors import ConfigError
from prost.model.clip import TokenShift, shift_indices
from prost.model.decoders import frame_query_mask
from prost.model.similarity import event_sentence, l2_normalize, object_phrase, similarity

SOT, EOT = 49406, 49407


def window(mask: torch.Tensor, row: int) -> tuple[int, int]:
    """[start, end) of the allowed columns of one query (they are contiguous)."""
    allowed = (~mask[row]).nonzero().flatten()
    assert (allowed[1:] - allowed[:-1] == 1).all()
    return int(allowed[0]), int(allowed[-1]) + 1


def test_frame_mask_msrvtt_worked_numbers():
    mask = frame_query_mask(12, 12)
    assert mask.shape == (12, 144)
    for i in range(9):
        assert window(mask, i) == (12 * i, 12 * i + 40)  # own 12 prototypes + the next 28
    for i in (9, 10, 11):
        assert window(mask, i) == (103, 144)  # shifted left, one column wider


def test_frame_mask_didemo_worked_numbers():
    mask = frame_query_mask(64, 12)
    for i in range(51):
        assert window(mask, i) == (12 * i, 12 * i + 165)
    for i in range(51, 64):
        assert window(mask, i) == (602, 768)


def test_frame_mask_own_frame_option():
    mask = frame_query_mask(12, 12, mode="own-frame")
    assert [window(mask, i) for i in range(12)] == [(12 * i, 12 * i + 12) for i in range(12)]


def test_shift_indices_official_b32_and_b16():
    assert shift_indices(50, 7) == ([1, 8, 15, 22, 29, 36, 43], [4, 11, 18, 25, 32, 39, 46])
    prev, nxt = shift_indices(197, 14)
    assert prev[:2] == [1, 15] and prev[-1] == 183 and nxt[:2] == [4, 18] and nxt[-1] == 186


def test_token_shift_moves_exactly_the_listed_tokens():
    frames, tokens, width = 4, 50, 8
    shift = TokenShift(width, 1, tokens, frames, n_div=7)
    x = torch.randn(2 * frames, tokens, width)
    y = shift.shift(x).reshape(2, frames, tokens, width)
    v = x.reshape(2, frames, tokens, width)
    prev, nxt = shift_indices(tokens, 7)
    for t in range(frames):
        for j in range(tokens):
            if j in prev and t > 0:
                expected = v[:, t - 1, j]
            elif j in nxt and t < frames - 1:
                expected = v[:, t + 1, j]
            else:
                expected = v[:, t, j]  # CLS, unlisted tokens, and clip edges keep their own values
            assert torch.equal(y[:, t, j], expected), (t, j)


def naive_scores(phrases, sentence, objects, events):
    """Loop reference of S_es and S_op, literally as the formulas read."""
    n_t, n_v = phrases.shape[0], objects.shape[0]
    s_es = torch.zeros(n_t, n_v)
    s_op = torch.zeros(n_t, n_v)
    for a in range(n_t):
        for b in range(n_v):
            s_es[a, b] = max(float(sentence[a] @ events[b, k]) for k in range(events.shape[1]))
            slots = []
            for j in range(objects.shape[2]):
                slots.append(max(float(phrases[a, i] @ objects[b, f, j])
                                 for f in range(objects.shape[1]) for i in range(phrases.shape[1])))
            s_op[a, b] = sum(slots) / len(slots)
    return s_es, s_op


def random_prototypes(n_t=3, n_v=4, n_p=5, frames=3, objects=4, events=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = prost.TextPrototypes(l2_normalize(torch.randn(n_t, n_p, d, generator=g)),
                                l2_normalize(torch.randn(n_t, d, generator=g)))
    video = prost.VideoPrototypes(l2_normalize(torch.randn(n_v, frames, objects, d, generator=g)),
                                  l2_normalize(torch.randn(n_v, events, d, generator=g)))
    return text, video


def test_similarity_equals_naive_loops():
    text, video = random_prototypes()
    ref_es, ref_op = naive_scores(text.phrases, text.sentence, video.objects, video.events)
    assert torch.allclose(event_sentence(text.sentence, video.events), ref_es, atol=1e-6)
    assert torch.allclose(object_phrase(text.phrases, video.objects), ref_op, atol=1e-6)
    total = similarity(text, video, beta=1.5)
    assert torch.allclose(total.total, ref_es + 1.5 * ref_op, atol=1e-6)


def test_chunked_similarity_equals_unchunked():
    text, video = random_prototypes(n_t=7, n_v=11, seed=1)
    full = similarity(text, video, beta=1.0)
    per_pair = text.phrases.shape[1] * video.objects.shape[1] * video.objects.shape[2]
    for block in (1, per_pair, 3 * per_pair, 20 * per_pair):
        chunked = similarity(text, video, beta=1.0, block_elements=block)
        for a, b in zip(full, chunked):
            assert torch.allclose(a, b, atol=1e-6)


def test_similarity_outside_autograd_equals_autograd_path(monkeypatch):
    """Eager fp32 scoring without gradients runs on numpy's BLAS; it equals the torch path that training takes (whose
    gradients still flow), and a traced graph keeps the torch ops rather than a numpy constant."""
    import numpy as np

    text, video = random_prototypes(n_t=64, n_v=10, seed=3)  # 320 phrase rows: over BLAS_MIN_ROWS
    calls = []
    monkeypatch.setattr(np, "matmul", lambda *a, matmul=np.matmul: calls.append(1) or matmul(*a))
    with torch.no_grad():
        eager = object_phrase(text.phrases, video.objects)
    assert calls, "the eager fp32 product did not run on numpy's BLAS"
    monkeypatch.undo()
    phrases = text.phrases.clone().requires_grad_(True)
    tracked = object_phrase(phrases, video.objects)
    tracked.sum().backward()
    assert torch.allclose(eager, tracked.detach(), atol=1e-6) and phrases.grad.abs().sum() > 0
    traced = torch.jit.trace(object_phrase, (text.phrases, video.objects))
    other_text, other_video = random_prototypes(n_t=64, n_v=10, seed=4)
    assert torch.allclose(traced(other_text.phrases, other_video.objects),
                          object_phrase(other_text.phrases, other_video.objects), atol=1e-6)


def test_bf16_similarity_rounds_each_cosine_once():
    """bf16 S_op (8 significant bits per input) keeps every score within 4e-3 of fp32 and returns float32; an
    unknown precision is refused."""
    text, video = random_prototypes(n_t=5, n_v=9, seed=2)
    full, half = similarity(text, video, beta=1.5), similarity(text, video, beta=1.5, compute="bf16")
    assert half.total.dtype == torch.float32 and torch.equal(full.s_es, half.s_es)  # S_es is one GEMV: fp32
    for a, b in ((full.total, half.total), (full.s_op, half.s_op)):
        assert 0 < (a - b).abs().max() < 4e-3
    with pytest.raises(ValueError, match="compute must be one of fp32, bf16"):
        similarity(text, video, compute="int8")


@pytest.fixture(scope="module")
def tiny():
    return prost.create_model("tiny", seed=0)


def token_batch(model, lengths, pad=0):
    width = model.config.max_words
    ids = torch.full((len(lengths), width), pad, dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    for row, n in enumerate(lengths):
        ids[row, 0] = SOT
        ids[row, 1 : n + 1] = torch.randint(1, 40000, (n,), generator=g, dtype=torch.int32)
        ids[row, n + 1] = EOT
    return ids


def test_padding_positions_feed_the_phrase_prototypes(tiny):
    """Upstream pools phrases over all W positions, pads included; the sentence is the EOT feature."""
    ids = token_batch(tiny, [5, 12])
    with torch.no_grad():
        text = tiny.encode_text(ids)
        words = tiny.clip.encode_tokens(ids)  # [B, W, D]
        weights = tiny.word_prototype_weight(words)  # [B, W, Np]
    all_positions = l2_normalize(weights.transpose(1, 2) @ words)
    real = (ids != 0).unsqueeze(-1).float()
    real_only = l2_normalize((weights * real).transpose(1, 2) @ words)
    assert torch.allclose(text.phrases, all_positions, atol=1e-6)
    assert not torch.allclose(text.phrases, real_only, atol=1e-3)
    eot = torch.tensor([6, 13])  # SOT + n tokens, then EOT
    assert torch.allclose(text.sentence, l2_normalize(words[torch.arange(2), eot]), atol=1e-6)


def test_caption_phrase_tokens_ignore_padding(tiny):
    """The paper's reading (head.phrase_tokens="caption") pools SOT..EOT only: phrases no longer depend on W."""
    model = prost.create_model(tiny.config.replace(**{"head.phrase_tokens": "caption"}), seed=0)
    wide = prost.create_model(model.config.replace(max_words=2 * model.config.max_words), seed=0)
    wide.load_state_dict(model.state_dict())
    ids = token_batch(model, [5, 12])
    padded = torch.cat([ids, torch.zeros_like(ids)], dim=1)
    with torch.no_grad():
        text, wide_text = model.encode_text(ids), wide.encode_text(padded)
        words = model.clip.encode_tokens(ids)
        weights = model.word_prototype_weight(words) * (ids != 0).unsqueeze(-1).float()
    assert torch.allclose(text.phrases, l2_normalize(weights.transpose(1, 2) @ words), atol=1e-6)
    assert torch.allclose(text.phrases, wide_text.phrases, atol=1e-5)
    assert torch.allclose(text.sentence, wide_text.sentence, atol=1e-5)
    official = prost.create_model(tiny.config.replace(max_words=2 * tiny.config.max_words), seed=0)
    official.load_state_dict(tiny.state_dict())
    with torch.no_grad():  # the official pooling, same weights, does depend on W
        assert not torch.allclose(tiny.encode_text(ids).phrases, official.encode_text(padded).phrases, atol=1e-3)


def test_encoders_shapes_and_unit_norm(tiny):
    cfg = tiny.config
    frames = torch.randn(2, cfg.head.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        video = tiny.encode_video(frames)
        text = tiny.encode_text(token_batch(tiny, [3, 10]))
    h, d = cfg.head, cfg.embed_dim
    assert video.objects.shape == (2, h.num_frames, h.num_objects, d)
    assert video.events.shape == (2, h.num_events, d)
    assert text.phrases.shape == (2, h.num_phrases, d) and text.sentence.shape == (2, d)
    for t in (*video, *text):
        norms = t.norm(dim=-1)
        assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)


def test_prototypes_pool_and_normalise_in_fp32_under_autocast(tiny):
    """Under bf16 autocast the towers run in bf16 but pooling and normalisation stay fp32: S_op's margins (~1e-2)
    are close to bf16's resolution (bf16 pooling cost a tiny synthetic run 7 points of t2v R@1: 51.3 vs 58.3)."""
    cfg = tiny.config
    frames = torch.randn(2, cfg.head.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size,
                         generator=torch.Generator().manual_seed(0))
    ids = token_batch(tiny, [3, 10])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        video, text = tiny.encode_video(frames), tiny.encode_text(ids)
        words = tiny.clip.encode_tokens(ids)
        tokens = tiny.clip.visual(frames.reshape(-1, *frames.shape[2:]))
    assert words.dtype == tokens.dtype == torch.bfloat16  # the towers did run in bf16
    assert all(t.dtype == torch.float32 for t in (*video, *text))
    with torch.no_grad():
        phrases = l2_normalize(tiny.word_prototype_weight.pool(words.float()))
        slots = l2_normalize(tiny.patch_prototype_weight.pool(tokens.float()))
    assert torch.allclose(text.phrases, phrases, atol=1e-6)
    assert torch.allclose(video.objects.reshape(-1, *video.objects.shape[2:])[:, 1:], slots, atol=1e-6)


def test_frames_are_encoded_per_video_not_per_batch(tiny):
    """Videos in a batch do not interact, but frames within a video do (token shift, decoders)."""
    cfg = tiny.config
    frames = torch.randn(3, cfg.head.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        batch = tiny.encode_video(frames)
        single = tiny.encode_video(frames[1:2])
        changed = frames.clone()
        changed[1, 1] = 0  # zero frame 1 of the middle video
        other = tiny.encode_video(changed)
    assert torch.allclose(batch.objects[1], single.objects[0], atol=1e-5)
    assert torch.allclose(other.objects[0], batch.objects[0], atol=1e-6)
    assert not torch.allclose(other.objects[1, 0], batch.objects[1, 0], atol=1e-4)  # frame 0 sees frame 1 via shift


def test_training_step_runs_in_deterministic_mode():
    """Forward and backward of the official loss under torch.use_deterministic_algorithms (errors on any op that
    has no deterministic implementation on the current device), and two runs agree exactly."""
    from prost.loss import prost_loss

    model = prost.create_model("tiny", seed=0).train()
    cfg = model.config
    frames = torch.randn(2, cfg.head.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = token_batch(model, [4, 9])
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            torch.manual_seed(0)  # same dropout masks
            model.zero_grad()
            sim = model(frames, ids)
            prost_loss(sim.s_es, sim.s_op, model.clip.logit_scale).backward()
            grads.append(model.patch_prototype_weight[0].weight.grad.clone())
    finally:
        torch.use_deterministic_algorithms(previous)
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])


def test_wrong_input_shapes_are_rejected(tiny):
    with pytest.raises(ValueError, match="frames must be"):
        tiny.encode_video(torch.zeros(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="token_ids must be"):
        tiny.encode_text(torch.zeros(1, 7, dtype=torch.int32))


def test_vit_b_32_preset_encodes_two_videos():
    model = prost.create_model("vit-b-32", seed=0)
    # The reference counts 8,978,471 used head parameters at L=12 (dead upstream modules are not built).
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("clip.")) == 8_978_471
    with torch.no_grad():
        video = model.encode_video(torch.randn(2, 12, 3, 224, 224))
        text = model.encode_text(torch.tensor(prost.tokenize(["a man is singing", "a dog runs"], 32)))
    assert video.objects.shape == (2, 12, 12, 512) and video.events.shape == (2, 3, 512)
    assert text.phrases.shape == (2, 28, 512) and text.sentence.shape == (2, 512)


def test_config_round_trip_and_errors():
    cfg = prost.create_model("tiny").config
    assert ProstConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(**{"head.num_events": 4}).head.num_events == 4
    with pytest.raises(ConfigError, match="unknown config key"):
        ProstConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="frame_mask"):
        cfg.replace(**{"head.frame_mask": "paper"})
    with pytest.raises(ConfigError, match="unknown preset"):
        prost.create_model("vit-z")


def test_loss_is_the_mean_of_four_infonce_terms():
    from prost.loss import prost_loss

    g = torch.Generator().manual_seed(0)
    s_es, s_op = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    scale = torch.tensor(100.0).log()
    ce = torch.nn.functional.cross_entropy
    labels = torch.arange(4)
    expected = (ce(100 * s_es, labels) + ce(100 * s_es.t(), labels) + ce(100 * s_op, labels)
                + ce(100 * s_op.t(), labels)) / 4
    assert torch.allclose(prost_loss(s_es, s_op, scale), expected)


def test_combined_loss_is_infonce_of_the_served_score():
    from prost.loss import combined_loss

    g = torch.Generator().manual_seed(0)
    s_es, s_op = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    ce, labels = torch.nn.functional.cross_entropy, torch.arange(4)
    served = 100 * (s_es + 1.5 * s_op)
    expected = (ce(served, labels) + ce(served.t(), labels)) / 2
    assert torch.allclose(combined_loss(s_es, s_op, 1.5, torch.tensor(100.0).log()), expected)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_torch_multihead_attention(heads):
    """Our export-friendly attention equals nn.MultiheadAttention (the official module) with the same weights."""
    from prost.model.attention import MASK_VALUE, MultiheadAttention

    torch.manual_seed(0)
    ours, ref = MultiheadAttention(32, heads).eval(), torch.nn.MultiheadAttention(32, heads).eval()
    ref.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    blocked = torch.rand(5, 7) > 0.6
    blocked[:, 0] = False  # every query sees something
    with torch.no_grad():
        expected = ref(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), attn_mask=blocked,
                       need_weights=False)[0].transpose(0, 1)
        got = ours(q, kv, kv, torch.zeros(5, 7).masked_fill(blocked, MASK_VALUE))
    assert torch.allclose(got, expected, atol=1e-6)
