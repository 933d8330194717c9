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

    def rows(self, start: int, stop: int, name: str) -> np.ndarray:
        """Rows [start, stop) of tensor `name` ("objects" or "events")."""
        out = []
        for b in range(start // self.block, (stop - 1) // self.block + 1):
            lo, hi = b * self.block, min((b + 1) * self.block, self.size)
            out.append(self._block(lo, hi, name)[max(start, lo) - lo:min(stop, hi) - lo])
        return np.concatenate(out)

    def take(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Tensor `name` at the given rows (any order), each block made once."""
        out = np.empty((len(rows), *getattr(self, name).shape[1:]), np.float32)
        if not len(rows):
            return out
        order = np.argsort(rows // self.block, kind="stable")
        starts = np.flatnonzero(np.diff(rows[order] // self.block, prepend=-1))
        for where in np.split(order, starts[1:]):
            lo = int(rows[where[0]]) // self.block * self.block
            out[where] = self._block(lo, min(lo + self.block, self.size), name)[rows[where] - lo]
        return out

    def _block(self, lo: int, hi: int, name: str) -> np.ndarray:
        raise NotImplementedError


class RandomUnit(BlockPrototypes):
    """Independent random unit vectors: the hardest case for ANN (neighbours barely nearer than the rest)."""

    def __init__(self, size: int, objects_dims: tuple[int, ...], events_dims: tuple[int, ...], seed: int = 0,
                 block: int = 1024) -> None:
        super().__init__([f"random-{i:07d}" for i in range(size)], objects_dims, events_dims, seed, block)

    def _block(self, lo: int, hi: int, name: str) -> np.ndarray:
        return self.take(np.arange(lo, hi), name)

    def take(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Each row from its own generator (seed, row, tensor), normalised while in cache: a sample of rows costs
        only those rows, and objects never make events (about 0.3 ms a ViT-B/32 video for each tensor)."""
        out = np.empty((len(rows), *getattr(self, name).shape[1:]), np.float32)
        for i, row in enumerate(rows):
            x = out[i]
            np.random.default_rng([self.seed, int(row), name == "events"]).standard_normal(x.shape, np.float32, out=x)
            x[...] = unit(x)
        return out


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

    def _block(self, lo: int, hi: int, name: str) -> np.ndarray:
        """Tensor `name` of rows [lo, hi): the random draws of both tensors are made in one order, so objects and
        events agree whichever is asked for, but only `name` is assembled and normalised."""
        pool = self.pool_objects if name == "objects" else self.pool_events
        made = [pool[lo:min(hi, self.real)]]
        n = hi - max(lo, self.real)
        if n > 0:
            rng = np.random.default_rng([self.seed, lo])
            base = rng.integers(self.real, size=n)
            slots = self.pool_objects.shape[2]
            swap = rng.random((n, slots)) < 0.5
            donor = rng.integers(self.real, size=(n, slots))
            event_rows = np.where(rng.random(n) < 0.5, rng.integers(self.real, size=n), base)
            scale = NOISE / np.sqrt(self.pool_objects.shape[-1])
            noise = rng.standard_normal((n, *self.pool_objects.shape[1:]), np.float32) * scale  # drawn for either
            if name == "objects":
                x = self.pool_objects[base]  # [n, L, No, D]
                for j in range(slots):
                    x[swap[:, j], :, j] = self.pool_objects[donor[swap[:, j], j], :, j]
            else:
                x = self.pool_events[event_rows]
                noise = rng.standard_normal(x.shape, np.float32) * scale
            made.append(unit(x + noise))
        return np.concatenate(made)


class _View:
    """Row slices (a range, or an index array) of one BlockPrototypes tensor."""

    def __init__(self, owner: BlockPrototypes, name: str, shape: tuple[int, ...]) -> None:
        self.owner, self.name, self.shape = owner, name, shape

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, _ = index.indices(self.shape[0])
            return self.owner.rows(start, stop, self.name)
        return self.owner.take(np.asarray(index), self.name)
