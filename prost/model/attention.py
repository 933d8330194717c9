"""Multi-head attention with the parameter layout of torch.nn.MultiheadAttention, batch-first and export-friendly."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Additive value for blocked positions: finite so that it stays representable in fp16 engines.
MASK_VALUE = -1.0e4


class MultiheadAttention(nn.Module):
    """Packed-projection attention (`in_proj_weight` = [W_q; W_k; W_v]) so official checkpoints load unchanged."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query [B, Q, C], key/value [B, K, C], mask additive [Q, K] -> [B, Q, C]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split(F.linear(query, w_q, b_q))
        k = self._split(F.linear(key, w_k, b_k))
        v = self._split(F.linear(value, w_v, b_v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, h, Q, K]
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = (weights @ v).transpose(1, 2)  # [B, Q, h, C/h]
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # Explicit sizes (not unflatten) keep every dimension inferable in the exported graph.
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)  # [B, h, N, C/h]
