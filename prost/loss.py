"""ProST training losses: the official mean of four InfoNCE terms over S_es and S_op, both directions, and the
opt-in InfoNCE of the served score S_es + beta * S_op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prost.model.similarity import combine

MAX_LOGIT_SCALE = 4.6052  # ln(100): the learnable temperature is clamped here after every step


def symmetric_infonce(scores: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of scale*S over rows and over columns, matched pairs on the diagonal; returns the sum."""
    logits = scale * scores
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def score_loss(scores: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """[CE(Z) + CE(Z^T)] / 2 with Z = exp(logit_scale) * S: the loss of one score matrix (the es / op ablations)."""
    return symmetric_infonce(scores, logit_scale.exp()) / 2


def prost_loss(s_es: torch.Tensor, s_op: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """[CE(Z_es) + CE(Z_es^T) + CE(Z_op) + CE(Z_op^T)] / 4 with Z = exp(logit_scale) * S."""
    return (score_loss(s_es, logit_scale) + score_loss(s_op, logit_scale)) / 2


def combined_loss(s_es: torch.Tensor, s_op: torch.Tensor, beta: float, logit_scale: torch.Tensor) -> torch.Tensor:
    """Not official: [CE(Z) + CE(Z^T)] / 2 with Z = exp(logit_scale) * (S_es + beta * S_op), the score that is served,
    so S_op learns what S_es misses instead of its own ranking."""
    return score_loss(combine(s_es, s_op, beta).total, logit_scale)


def ranking_mode(loss: str) -> str:
    """The similarity a training loss optimises, as `prost eval --mode` names it: both losses over S_es and S_op
    rank by the full score."""
    return "full" if loss == "combined" else loss
