"""Galleries grown from real prototypes: distractor videos derived from encoded ones, made on demand in blocks, so
benchmarks and tests reach a million videos without encoding them (bench/scale.py, README: Gallery engine)."""

from __future__ import annotations

import numpy as np

from prost.gallery.build import Prototypes

NOISE = 0.35  # norm of the noise added to each derived distractor vector before it is normalised again


def unit(x: np.ndarray) -> np.ndarray:
    """x / ||x|| along the last axis."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class BlockPrototypes:
    """Prototypes of `size` videos made on demand in blocks (deterministic per block), so a million videos never sit
    in memory at once; `objects` and `events` slice like arrays. Subclasses make a block in `_block`."""

    def __init__(self, video_ids: list[str], objects_dims: tuple[int, ...], events_dims: tuple[int, ...],
                 seed: int, block: int) -> None:
        self.video_ids, self.size, self.seed, self.block = video_ids, len(video_ids), seed, block
        self.objects = _View(self, "objects", (self.size, *objects_dims))
        self.events = _View(self, "events", (self.size, *events_dims))

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Objects and events of rows [start, stop)."""
        out_o, out_e = [], []
        for b in range(start // self.block, (stop - 1) // self.block + 1):
            lo, hi = b * self.block, min((b + 1) * self.block, self.size)
            o, e = self._block(lo, hi)
            take = slice(max(start, lo) - lo, min(stop, hi) - lo)
            out_o.append(o[take])
            out_e.append(e[take])
        return np.concatenate(out_o), np.concatenate(out_e)

    def _block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class RandomUnit(BlockPrototypes):
    """Independent random unit vectors: the hardest case for ANN (neighbours barely nearer than the rest)."""

    def __init__(self, size: int, objects_dims: tuple[int, ...], events_dims: tuple[int, ...], seed: int = 0,
                 block: int = 1024) -> None:
        super().__init__([f"random-{i:07d}" for i in range(size)], objects_dims, events_dims, seed, block)

    def _block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, lo])
        return (unit(rng.standard_normal((hi - lo, *self.objects.shape[1:]), np.float32)),
                unit(rng.standard_normal((hi - lo, *self.events.shape[1:]), np.float32)))


class Grown(BlockPrototypes):
    """Prototypes of `size` videos: the real rows of `pool` first, then distractors derived from them.

    A distractor takes a random pool video and replaces each object slot (all its frames) and the event set, each
    with probability 1/2, by those of other random pool videos; every vector then gets noise of norm NOISE and is
    normalised. So distractors combine real objects and events in new ways, near the real ones but not copies."""

    def __init__(self, pool: Prototypes, size: int, seed: int = 0, block: int = 4096) -> None:
        self.real = min(len(pool.video_ids), size)
        self.pool_objects = np.asarray(pool.objects[:self.real], np.float32)
        self.pool_events = np.asarray(pool.events[:self.real], np.float32)
        ids = list(pool.video_ids[:self.real]) + [f"distractor-{i:07d}" for i in range(size - self.real)]
        super().__init__(ids, self.pool_objects.shape[1:], self.pool_events.shape[1:], seed, block)

    def _block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        real = slice(lo, min(hi, self.real))
        objects, events = [self.pool_objects[real]], [self.pool_events[real]]
        n = hi - max(lo, self.real)
        if n > 0:
            rng = np.random.default_rng([self.seed, lo])
            base = rng.integers(self.real, size=n)
            o = self.pool_objects[base].copy()  # [n, L, No, D]
            swap = rng.random((n, o.shape[2])) < 0.5
            donor = rng.integers(self.real, size=(n, o.shape[2]))
            for j in range(o.shape[2]):
                o[swap[:, j], :, j] = self.pool_objects[donor[swap[:, j], j], :, j]
            e = self.pool_events[np.where(rng.random(n) < 0.5, rng.integers(self.real, size=n), base)]
            d = o.shape[-1]
            o = unit(o + rng.standard_normal(o.shape, np.float32) * (NOISE / np.sqrt(d)))
            e = unit(e + rng.standard_normal(e.shape, np.float32) * (NOISE / np.sqrt(d)))
            objects.append(o)
            events.append(e)
        return np.concatenate(objects), np.concatenate(events)


class _View:
    """Row slices (a range, or an index array) of one BlockPrototypes tensor."""

    def __init__(self, owner: BlockPrototypes, name: str, shape: tuple[int, ...]) -> None:
        self.owner, self.name, self.shape = owner, name, shape

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, _ = index.indices(self.shape[0])
            return self.owner.rows(start, stop)[0 if self.name == "objects" else 1]
        rows = np.asarray(index)
        out = np.zeros((len(rows), *self.shape[1:]), np.float32)
        block = self.owner.block
        for b in np.unique(rows // block):  # each block made once
            where = np.flatnonzero(rows // block == b)
            made = self.owner.rows(int(b) * block, min((int(b) + 1) * block, self.shape[0]))
            out[where] = made[0 if self.name == "objects" else 1][rows[where] - int(b) * block]
        return out
