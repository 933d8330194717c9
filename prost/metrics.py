"""Standard text-video retrieval metrics (R@K, MdR, MnR) from a similarity matrix, and the transductive Hungarian R@1.

Conventions (official `metrics.py::compute_metrics`, ProST main_my.py lines 300-542):

* rank = 0-based position of the ground truth in its row sorted by descending score; R@K = % of queries with
  rank < K; MdR = median(rank) + 1; MnR = mean(rank) + 1.
* Ties: the official code finds the rank by equality (`np.where(sorted - gt == 0)`), so a ground truth tied with
  other items takes the best of the tied positions. We follow it: rank = number of items scoring *strictly* higher.
  (The official code also emits one extra entry per tied position, inflating its denominator; we keep exactly one
  rank per query.) NaN scores count as -inf, as officially: below every item, tied with each other. Because a
  constant (collapsed) matrix would then score perfectly, every result also reports `tied`, the number of queries
  whose ground truth ties another item, and `ties="pessimistic"` (every tied item ranked above the ground truth)
  gives the other bound.
* Several captions per video: text-to-video rows are captions, each with its video as ground truth; video-to-text
  ranks videos' caption groups by their best caption, G[v, u] = max over u's captions of S[c, v], as CLIP4Clip's
  multi-sentence protocol (a video's own other captions never count against it, another video counts once).
* The Hungarian one-to-one assignment (`hungarian_r1`) is the post-processing the official log prints first. It is
  transductive (it needs every query at once and assumes a one-to-one test set), so it is opt-in and every result
  it produces carries `"transductive": True` and a label saying so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

RECALL_KS = (1, 5, 10)
TIES = ("optimistic", "pessimistic")
TRANSDUCTIVE_LABEL = "Hungarian one-to-one assignment (transductive, not standard R@1)"

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(scores: ArrayLike) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN ground truth must not rank first
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [queries, items] matrix, got shape {scores.shape}")
    return scores


def ground_truth_ranks(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """0-based rank of each row's ground-truth column: the number of items scoring strictly higher (ties favour it)."""
    scores, truth = _truth(scores, targets)
    return (scores > truth).sum(axis=1)


def _truth(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_numpy(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have one entry per row ({scores.shape[0]}), got shape {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must index columns in [0, {scores.shape[1]})")
    return scores, scores[np.arange(len(targets)), targets][:, None]  # [Q, V], [Q, 1]


def _with_ties(ranks: np.ndarray, tied: np.ndarray) -> dict[str, float]:
    """Summary plus `tied`: queries whose ground truth ties another item (a degenerate, e.g. constant, matrix
    scores perfectly under the official rule, so any count above zero deserves a look)."""
    return {**summarize(ranks), "tied": int(np.sum(tied))}


def summarize(ranks: ArrayLike) -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) of 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in RECALL_KS}
    out["MdR"] = float(np.median(ranks) + 1)
    out["MnR"] = float(np.mean(ranks) + 1)
    out["queries"] = int(ranks.size)
    return out


def text_to_video(scores: ArrayLike, caption_video: ArrayLike, ties: str = "optimistic") -> dict[str, float]:
    """Metrics of S [captions, videos]: each caption's ground truth is its video."""
    scores, truth = _truth(scores, caption_video)
    equal = (scores == truth).sum(axis=1) - 1  # other items tied with the ground truth
    return _with_ties((scores > truth).sum(axis=1) + (equal if _pessimistic(ties) else 0), equal > 0)


def _pessimistic(ties: str) -> bool:
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}; valid: {', '.join(TIES)}")
    return ties == "pessimistic"


def video_to_text(scores: ArrayLike, caption_video: ArrayLike, ties: str = "optimistic") -> dict[str, float]:
    """Metrics of S^T over the videos that have captions: video v ranks every such video u by the best score of u's
    captions, G[v, u] = max_c S[c, v] (CLIP4Clip's multi-sentence protocol), and its ground truth is u = v."""
    scores = _as_numpy(scores)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if caption_video.shape != (scores.shape[0],):
        raise ValueError(f"caption_video must have one entry per caption ({scores.shape[0]}), "
                         f"got {caption_video.shape}")
    by_group = np.full((scores.shape[1], scores.shape[1]), -np.inf)  # [u, v]: best caption of u against video v
    np.maximum.at(by_group, caption_video, scores)
    has_caption = np.bincount(caption_video, minlength=scores.shape[1]) > 0
    grouped = by_group[has_caption][:, has_caption].T  # [v, u]
    return text_to_video(grouped, np.arange(len(grouped)), ties)


def retrieval_metrics(scores: ArrayLike, caption_video: ArrayLike | None = None,
                      ties: str = "optimistic") -> dict[str, dict[str, float]]:
    """t2v and v2t metrics of S [captions, videos]; `caption_video` defaults to the diagonal (one caption each).

    `ties`: "optimistic" (official: a tied ground truth takes the best tied position) or "pessimistic".
    """
    scores = _as_numpy(scores)
    if caption_video is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"a non-square matrix {scores.shape} needs caption_video (the video of each caption)")
        caption_video = np.arange(scores.shape[0])
    return {"t2v": text_to_video(scores, caption_video, ties), "v2t": video_to_text(scores, caption_video, ties)}


def hungarian_r1(scores: ArrayLike, caption_video: ArrayLike | None = None) -> dict[str, Any]:
    """Transductive R@1: % of captions that a one-to-one assignment (cost 2 - S over all queries) gives their video.

    With more captions than videos, only min(captions, videos) captions get a video; the others count as misses.
    """
    scores = _as_numpy(scores)
    caption_video = np.arange(scores.shape[0]) if caption_video is None else np.asarray(caption_video, np.int64)
    rows, cols = linear_sum_assignment(2.0 - np.nan_to_num(scores, nan=-1e9, neginf=-1e9, posinf=1e9))
    hits = int(np.sum(caption_video[rows] == cols))
    return {"R@1": 100.0 * hits / scores.shape[0], "queries": int(scores.shape[0]), "transductive": True,
            "label": TRANSDUCTIVE_LABEL}


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one line per (name, direction) with R@1/5/10, MdR, MnR."""
    header = f"{'':<22}{'dir':<5}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MdR':>7}{'MnR':>8}"
    lines = [header, "-" * len(header)]
    for name, result in rows.items():
        for direction in ("t2v", "v2t"):
            if direction not in result:
                continue
            m = result[direction]
            lines.append(f"{name:<22}{direction:<5}{m['R@1']:>7.1f}{m['R@5']:>7.1f}{m['R@10']:>7.1f}"
                         f"{m['MdR']:>7.1f}{m['MnR']:>8.1f}")
    return "\n".join(lines)
