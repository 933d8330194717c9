"""Training batch orders: the opt-in hard-negative grouping of caption-similar videos, and an epoch's micro-batches
from any point on, so a run resumed mid-epoch sees the batches an uninterrupted one would."""

from __future__ import annotations

import re

import numpy as np
import torch


class HardNegativeSampler(torch.utils.data.Sampler):
    """Epoch order in which each video sits next to the `group` - 1 videos with the most similar captions (TF-IDF
    over words and word pairs), so batches hold hard negatives. Not in the official recipe; off by default.

    Like DistributedSampler it yields this rank's share; rank r takes slice r of every global batch.
    """

    def __init__(self, captions: list[list[str]], group: int, batch_size: int, world: int = 1, rank: int = 0,
                 seed: int = 0, neighbours: int = 16) -> None:
        self.group, self.batch_size, self.world, self.rank = group, batch_size, world, rank
        self.seed, self.epoch = seed, 0
        self.neighbours = caption_neighbours(captions, neighbours)
        self.batches = len(captions) // batch_size  # global batches per epoch (drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """Greedy groups in a seeded random order of seeds: a seed, then its nearest still unassigned videos."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        taken = np.zeros(len(self.neighbours), dtype=bool)
        order: list[int] = []
        for seed in torch.randperm(len(self.neighbours), generator=generator).tolist():
            if taken[seed]:
                continue
            members = [seed] + [int(j) for j in self.neighbours[seed] if not taken[j]][: self.group - 1]
            taken[members] = True
            order += members
        return order

    def __iter__(self):
        order, local = self.global_order(), self.batch_size // self.world
        for b in range(self.batches):
            start = b * self.batch_size + self.rank * local
            yield from order[start:start + local]

    def __len__(self) -> int:
        return self.batches * (self.batch_size // self.world)


def caption_neighbours(captions: list[list[str]], k: int, chunk: int = 1024) -> np.ndarray:
    """For each video, the k others with the most similar captions: cosine of TF-IDF word and word-pair counts."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for row, texts in enumerate(captions):
        for text in texts:
            words = re.findall(r"\w+", text.lower())
            for term in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                rows.append(row)
                cols.append(vocab.setdefault(term, len(vocab)))
    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(captions), len(vocab)))
    idf = np.log((1 + len(captions)) / (1 + np.bincount(counts.indices, minlength=len(vocab)))) + 1
    tfidf = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel()) + 1e-12
    tfidf = sparse.diags(1 / norms) @ tfidf
    k = min(k, len(captions) - 1)
    out = np.empty((len(captions), k), dtype=np.int64)
    for start in range(0, len(captions), chunk):  # bounded memory: [chunk, N] scores at a time
        scores = (tfidf[start:start + chunk] @ tfidf.T).toarray()
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf  # not itself
        top = np.argpartition(-scores, k, axis=1)[:, :k] if k < scores.shape[1] - 1 else np.argsort(-scores)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        out[start:start + len(scores)] = np.take_along_axis(top, np.argsort(-best, axis=1, kind="stable"), axis=1)
    return out


class EpochBatches(torch.utils.data.Sampler):
    """Batches of a DistributedSampler's epoch order, from micro-batch `start` up to `stop` (resumes mid-epoch)."""

    def __init__(self, sampler: torch.utils.data.Sampler, batch_size: int, start: int, stop: int) -> None:
        self.sampler, self.batch_size, self.start, self.stop = sampler, batch_size, start, stop

    def __iter__(self):
        order = list(self.sampler)
        for b in range(self.start, self.stop):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.stop - self.start
