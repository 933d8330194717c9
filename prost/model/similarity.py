"""ProST similarity as pure functions shared by training, evaluation and export.

Inputs are L2-normalised prototypes, as the encoders return them; scores are cosines.
S_es(t, v) = max_k <s_t, e_vk>;  S_op(t, v) = mean_j max_{f, i} <p_ti, o_vfj>;  S = S_es + beta * S_op.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Largest [T, Np, V, L, No] block materialised at once by `similarity` (elements, fp32: 64 MiB).
DEFAULT_BLOCK_ELEMENTS = 1 << 24


class Similarity(NamedTuple):
    """Text-by-video score matrices [T, V]."""

    total: torch.Tensor
    s_es: torch.Tensor
    s_op: torch.Tensor


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, 1e-12) along the last axis (a zero vector stays zero)."""
    return F.normalize(x, dim=-1, eps=1e-12)


def event_sentence(sentence: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """ESPM: sentence [T, D], events [V, Ne, D] -> [T, V], the best event per video."""
    return torch.einsum("td,vkd->tvk", sentence, events).amax(dim=-1)


def object_phrase(phrases: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """OPPM: phrases [T, Np, D], objects [V, L, No, D] -> [T, V].

    Each object slot takes its best phrase over all frames, then slots are averaged (divisor No).
    """
    t, n_p, d = phrases.shape
    v, n_l, n_o, _ = objects.shape
    sims = phrases.reshape(t * n_p, d) @ objects.reshape(v * n_l * n_o, d).transpose(0, 1)
    sims = sims.reshape(t, n_p, v, n_l, n_o).amax(dim=1).amax(dim=2)  # [T, V, No]
    return sims.mean(dim=-1)


def combine(s_es: torch.Tensor, s_op: torch.Tensor, beta: float | torch.Tensor) -> Similarity:
    """S = S_es + beta * S_op."""
    return Similarity(s_es + beta * s_op, s_es, s_op)


def similarity(text, video, beta: float = 1.0, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> Similarity:
    """Score TextPrototypes against VideoPrototypes in blocks, never holding more than `block_elements` pair scores.

    Args:
        text: TextPrototypes (phrases [T, Np, D], sentence [T, D]).
        video: VideoPrototypes (objects [V, L, No, D], events [V, Ne, D]).
        beta: weight of S_op.
        block_elements: bound on the size of the intermediate [t, Np, v, L, No] block.
    """
    phrases, sentence = text.phrases, text.sentence
    objects, events = video.objects, video.events
    n_t, n_v = phrases.shape[0], objects.shape[0]
    per_pair = phrases.shape[1] * objects.shape[1] * objects.shape[2]
    video_chunk = max(1, min(n_v, block_elements // per_pair))
    text_chunk = max(1, block_elements // (per_pair * video_chunk))
    s_op = phrases.new_empty(n_t, n_v)
    for t0 in range(0, n_t, text_chunk):
        for v0 in range(0, n_v, video_chunk):
            s_op[t0 : t0 + text_chunk, v0 : v0 + video_chunk] = object_phrase(
                phrases[t0 : t0 + text_chunk], objects[v0 : v0 + video_chunk]
            )
    return combine(event_sentence(sentence, events), s_op, beta)
