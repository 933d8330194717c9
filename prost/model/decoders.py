"""Temporal prototype generation (TPG): the frame decoder and the event decoder of the official code.

Both stacks keep the official module names (`V`, `event_decoder.layers.N.multihead_attn`, `norm1..5`) so that
checkpoints load unchanged; the frame decoder's inner stack is called `event_decoder` upstream too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prost.model.attention import MASK_VALUE, MultiheadAttention


def frame_query_mask(frames: int, objects: int, mode: str = "official", ratio: float = 0.2) -> torch.Tensor:
    """Blocked positions [L, L*No] (True = blocked) of the frame queries over the frame-major object memory.

    "official": query i sees its own No columns plus the next floor(ratio*L*No); a window that would pass the end is
    shifted left and made one column wider (decoder.py `adaptive_mask`). "own-frame": the paper's reading, own frame
    only.
    """
    columns = frames * objects
    allowed = torch.zeros(frames, columns, dtype=torch.bool)
    extra = int(columns * ratio) if mode == "official" else 0
    width = columns // frames
    for i in range(frames):
        start, end = i * width, i * width + width + extra
        if mode == "official" and end >= columns:
            start, end = max(0, start - (end - columns + 1)), columns
        allowed[i, start:end] = True
    return ~allowed


class FrameLayer(nn.Module):
    """Cross-attention-only layer: q = LN1(q); m = LN2(M0); q = LN3(q + attn(q, m)); q = LN4(q + ffn(q))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, 1, dropout)
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.dropout = dropout

    def forward(self, q: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, m = self.norm1(q), self.norm2(memory)
        return self.feed_forward(self.cross_attend(q, m, mask, self.norm3), self.norm4)

    def cross_attend(self, q: torch.Tensor, m: torch.Tensor, mask: torch.Tensor | None, norm: nn.Module) -> torch.Tensor:
        return norm(q + self._drop(self.multihead_attn(q, m, m, mask)))

    def feed_forward(self, q: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        return norm(q + self._drop(self.linear2(self._drop(F.relu(self.linear1(q))))))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training)


class EventLayer(FrameLayer):
    """FrameLayer preceded by self-attention WITHOUT residual (q = LN3(selfattn(q))); LN4 and LN5 follow."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(dim, dropout)
        self.self_attn = MultiheadAttention(dim, 1, dropout)
        self.norm5 = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, m = self.norm1(q), self.norm2(memory)
        q = self.norm3(self.self_attn(q, q, q))
        return self.feed_forward(self.cross_attend(q, m, mask, self.norm4), self.norm5)


class DecoderStack(nn.Module):
    """Layers applied in turn to the queries, each reading the raw memory, then a final LayerNorm `norm`."""

    def __init__(self, layers: list[nn.Module], dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            q = layer(q, memory, mask)
        return self.norm(q)


class FrameDecoder(nn.Module):
    """L learned queries over the object prototypes of all frames; F = 0.5 dec + 0.5 frame CLS -> [B, L, D]."""

    def __init__(self, dim: int, frames: int, objects: int, layers: int, dropout: float, mask_mode: str,
                 mask_ratio: float) -> None:
        super().__init__()
        self.V = nn.Parameter(torch.empty(frames, dim))
        nn.init.xavier_uniform_(self.V)
        self.event_decoder = DecoderStack([FrameLayer(dim, dropout) for _ in range(layers)], dim)
        blocked = frame_query_mask(frames, objects, mask_mode, mask_ratio)
        self.register_buffer("mask", torch.zeros(blocked.shape).masked_fill(blocked, MASK_VALUE), persistent=False)

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        """objects O [B, L, No, D] -> frame prototypes F [B, L, D]."""
        memory = objects.reshape(objects.shape[0], -1, objects.shape[3])  # [B, L*No, D]: column f*No + j
        queries = self.V.expand(objects.shape[0], -1, -1)
        return 0.5 * self.event_decoder(queries, memory, self.mask) + 0.5 * objects[:, :, 0]


class EventDecoder(nn.Module):
    """Ne learned queries over the frame prototypes; E = 0.5 dec + 0.5 mean frame CLS -> [B, Ne, D]."""

    def __init__(self, dim: int, events: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.V = nn.Parameter(torch.empty(events, dim))
        nn.init.xavier_uniform_(self.V)
        self.event_decoder = DecoderStack([EventLayer(dim, dropout) for _ in range(layers)], dim)

    def forward(self, frames: torch.Tensor, frame_cls: torch.Tensor) -> torch.Tensor:
        """frames F [B, L, D], frame_cls [B, L, D] (mean includes zero-padded frames, as upstream) -> E."""
        queries = self.V.expand(frames.shape[0], -1, -1)
        return 0.5 * self.event_decoder(queries, frames) + 0.5 * frame_cls.mean(dim=1, keepdim=True)
