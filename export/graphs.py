"""The torch modules exported as graphs, and random inputs that fit a GraphSpec (for tracing and parity gates)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prost.model.prost import ProstModel
from prost.model.similarity import combine, event_sentence, object_phrase
from prost.tokenizer import get_tokenizer
from prost_export.specs import VIDEOS, GraphSpec


class EncoderGraph(nn.Module):
    """One tower as a graph: "video" (FRAMES -> objects, events) or "text" (TOKEN_IDS -> phrases, sentence)."""

    def __init__(self, model: ProstModel, tower: str) -> None:
        super().__init__()
        self.model = model
        self.tower = tower

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encode = self.model.encode_video if self.tower == "video" else self.model.encode_text
        return tuple(encode(x))


class SimilarityGraph(nn.Module):
    """The weight-free similarity: prototypes of T texts and V videos, BETA -> SIMILARITY, S_ES, S_OP [T, V]."""

    def forward(self, phrases, sentence, objects, events, beta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(combine(event_sentence(sentence, events), object_phrase(phrases, objects), beta))


def example_inputs(spec: GraphSpec, batch: int = 2, seed: int = 0, videos: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs of a graph's spec with every dynamic dimension set to `batch`, except the similarity graph's
    video count, set to `videos` when given (tracing and gating with unequal counts keeps them apart)."""
    rng = np.random.default_rng(seed)
    sizes = {VIDEOS: batch if videos is None else videos}
    out = {}
    for t in spec.inputs:
        shape = tuple(sizes.get(d, batch) if isinstance(d, str) else d for d in t.shape)
        if t.dtype == "int32":
            out[t.name] = random_token_ids(rng, shape)
        else:
            x = rng.standard_normal(shape).astype(np.float32)
            out[t.name] = x / np.linalg.norm(x, axis=-1, keepdims=True) if t.normalised else x
    return out


def random_token_ids(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Well-formed ids: SOT, random BPE tokens, EOT, zero padding, with varied lengths."""
    batch, width = shape
    tokenizer = get_tokenizer()
    ids = np.zeros(shape, dtype=np.int32)
    for row in range(batch):
        n = int(rng.integers(1, width - 1))
        ids[row, 0] = tokenizer.sot_id
        ids[row, 1 : n + 1] = rng.integers(1, tokenizer.sot_id, n)
        ids[row, n + 1] = tokenizer.eot_id
    return ids
