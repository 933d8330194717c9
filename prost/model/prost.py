"""The ProST model: CLIP towers + spatial and temporal prototype generation, as two independent encoders."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from prost.config import ProstConfig
from prost.model.clip import CLIP
from prost.model.decoders import EventDecoder, FrameDecoder
from prost.model.prototypes import PrototypeWeights, object_prototypes
from prost.model.similarity import Similarity, event_sentence, l2_normalize, object_phrase, combine


class VideoPrototypes(NamedTuple):
    """L2-normalised video prototypes."""

    objects: torch.Tensor  # [B, L, No, D]
    events: torch.Tensor  # [B, Ne, D]


class TextPrototypes(NamedTuple):
    """L2-normalised text prototypes."""

    phrases: torch.Tensor  # [B, Np, D]
    sentence: torch.Tensor  # [B, D]


def _full_precision(like: torch.Tensor):
    """Autocast off: the prototype-weight MLPs, pooling and normalisation run in fp32 (S_op's margins, ~1e-2 in
    cosine, are near bf16's resolution); the towers and decoders stay under autocast."""
    return torch.autocast(like.device.type, enabled=False)


class ProstModel(nn.Module):
    """ProST (ICCV 2023). Attribute names equal the official checkpoint's top-level keys."""

    def __init__(self, config: ProstConfig) -> None:
        super().__init__()
        self.config = config
        head, dim = config.head, config.embed_dim
        self.clip = CLIP(config.vision, config.text, dim, head.num_frames, config.max_words, config.shift_div,
                         config.shift_blocks)
        self.patch_prototype_weight = PrototypeWeights(dim, head.num_objects - 1)
        self.word_prototype_weight = PrototypeWeights(dim, head.num_phrases)
        self.frame_decoder = FrameDecoder(dim, head.num_frames, head.num_objects, head.decoder_layers, head.dropout,
                                          head.frame_mask, head.frame_mask_ratio)
        self.event_decoder = EventDecoder(dim, head.num_events, head.decoder_layers, head.dropout)

    def encode_video(self, frames: torch.Tensor) -> VideoPrototypes:
        """frames [B, L, 3, S, S] (CLIP-normalised, zero-filled padding) -> objects [B, L, No, D], events [B, Ne, D]."""
        frames_per_video = self.config.head.num_frames
        if frames.dim() != 5 or frames.shape[1] != frames_per_video:
            raise ValueError(f"frames must be [B, {frames_per_video}, 3, S, S], got {list(frames.shape)}")
        images = frames.reshape(-1, *frames.shape[2:])  # [B*L, 3, S, S]; all L frames of a video in one pass
        tokens = self.clip.visual(images)
        with _full_precision(tokens):
            objects = object_prototypes(self.patch_prototype_weight, tokens.float())  # [B*L, No, D]
        objects = objects.reshape(-1, frames_per_video, objects.shape[1], objects.shape[2])
        frame_cls = objects[:, :, 0]  # [B, L, D]
        events = self.event_decoder(self.frame_decoder(objects), frame_cls)
        with _full_precision(events):
            return VideoPrototypes(l2_normalize(objects), l2_normalize(events.float()))

    def encode_text(self, token_ids: torch.Tensor) -> TextPrototypes:
        """token_ids [B, W] (SOT, tokens, EOT, zero padding) -> phrases [B, Np, D], sentence [B, D]."""
        if token_ids.dim() != 2 or token_ids.shape[1] != self.config.max_words:
            raise ValueError(f"token_ids must be [B, {self.config.max_words}], got {list(token_ids.shape)}")
        words = self.clip.encode_tokens(token_ids)  # [B, W, D]
        with _full_precision(words):
            return self._text_prototypes(words.float(), token_ids)

    def _text_prototypes(self, words: torch.Tensor, token_ids: torch.Tensor) -> TextPrototypes:
        """Phrase prototypes and the EOT sentence feature from the text tower's output at every position."""
        caption = (token_ids != 0).to(words.dtype)  # SOT..EOT
        # Official code: every position feeds the phrases, padding included (it has attended to the whole caption).
        keep = caption if self.config.head.phrase_tokens == "caption" else None
        phrases = self.word_prototype_weight.pool(words, keep)
        # s = G at EOT, the last non-pad position (= sum(mask) - 1 upstream). Positions are small floats, exact even
        # in fp16, and the pick is a one-hot sum: no ArgMax and no data-dependent shapes in the exported graph.
        positions = torch.arange(token_ids.shape[1], device=token_ids.device, dtype=words.dtype)
        eot = (positions * caption).amax(dim=-1, keepdim=True)  # [B, 1]
        sentence = (words * (positions == eot).unsqueeze(-1).to(words.dtype)).sum(dim=1)
        return TextPrototypes(l2_normalize(phrases), l2_normalize(sentence))

    def forward(self, frames: torch.Tensor, token_ids: torch.Tensor) -> Similarity:
        """Full text-by-video similarity of a training batch (unchunked, differentiable)."""
        video, text = self.encode_video(frames), self.encode_text(token_ids)
        s_es = event_sentence(text.sentence, video.events)
        s_op = object_phrase(text.phrases, video.objects)
        return combine(s_es, s_op, self.config.beta)
