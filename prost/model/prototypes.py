"""Spatial prototype generation (SPG): unnormalised ReLU-weighted sums of tokens, for patches and for words."""

from __future__ import annotations

import torch
from torch import nn


class PrototypeWeights(nn.Sequential):
    """Per-token weights A = ReLU(W2 ReLU(W1 h + b1) + b2); keys `.0` and `.2` as in the official checkpoint."""

    def __init__(self, dim: int, prototypes: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, prototypes), nn.ReLU())

    def pool(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [N, T, D] -> prototypes [N, K, D] = A^T H, with no normalisation of A (official code).

        `keep` [N, T] (0/1, tokens' dtype) zeroes the weights of the other positions.
        """
        weights = self(tokens)  # [N, T, K]
        if keep is not None:
            weights = weights * keep.unsqueeze(-1)
        return weights.transpose(1, 2) @ tokens


def object_prototypes(weights: PrototypeWeights, tokens: torch.Tensor) -> torch.Tensor:
    """tokens H [B*L, T, D] (CLS first) -> O [B*L, No, D]: slot 0 is the frame CLS, the rest pool all tokens."""
    return torch.cat([tokens[:, :1], weights.pool(tokens)], dim=1)
