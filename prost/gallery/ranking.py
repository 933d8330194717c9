"""Running top-k over chunks of scores, in numpy only (no Triton import, so tests call it directly)."""

from __future__ import annotations

import numpy as np


def merge_top_k(best_i: np.ndarray, best_s: np.ndarray, new_i: np.ndarray, new_s: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (index, score) pairs per row among the kept [T, k'] and a new chunk [T, c], best first.

    Ties go to the lower video index, also at the k-th place: a full (score, index) sort of the k + c candidates
    (argpartition would keep an arbitrary subset of tied scores at the boundary).
    """
    cand_s = np.concatenate([best_s, new_s], axis=1)
    cand_i = np.concatenate([best_i, new_i], axis=1)
    order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]
    return np.take_along_axis(cand_i, order, 1), np.take_along_axis(cand_s, order, 1)
