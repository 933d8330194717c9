"""Training data: the decoded (and cached) training clips, the sampler, each epoch's loader, the validation items."""

from __future__ import annotations

import logging
import os
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from prost.data.datasets import ClipDataset, ClipLoader, clip_key, load_split
from prost.data.sampling import EpochBatches, HardNegativeSampler
from prost.distributed import Dist
from prost.errors import ConfigError, DataError
from prost.train.config import TrainConfig

log = logging.getLogger(__name__)

FRAME_CACHE_MAX_BYTES = 8 << 30


def load_training_clips(config: TrainConfig, workers: int, env: Dist = Dist()) -> ClipDataset:
    """The training split, captions tokenized once, decoded once by `workers` processes (unreadable videos dropped,
    the same ones on every rank) and, with `frame_cache`, kept in memory as uint8 frames (the memory limit shared
    by the ranks of a machine)."""
    model = config.model
    cache_limit = FRAME_CACHE_MAX_BYTES // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    items = load_split(config.data, config.split, layout=config.layout, expand_captions=config.expand_captions)
    num_frames, image_size = model.head.num_frames, model.vision.image_size
    if config.frame_cache:
        clips = len({clip_key(item) for item in items})
        need = clips * num_frames * 3 * image_size ** 2  # uint8 bytes at most
        if need > cache_limit:
            raise ConfigError(f"the frame cache of {clips} clips would take {need / 2**30:.1f} GiB "
                              f"(limit {cache_limit / 2**30:.1f} GiB per process); train with --no-frame-cache")
    data = ClipDataset(items, num_frames, image_size, model.max_words, train=True, seed=config.seed,
                       cache_bytes=cache_limit if config.frame_cache else 0, sample_fps=model.sample_fps)
    data.preload(workers, agree=None if env.world == 1 else partial(_readable_on_every_rank, env.device))
    return data


def _readable_on_every_rank(device: torch.device, mask: np.ndarray) -> np.ndarray:
    """The clips every rank could decode (an all-reduce MIN over the ranks' readable masks)."""
    flags = torch.from_numpy(mask.astype(np.uint8)).to(device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return flags.cpu().numpy().astype(bool)


def make_sampler(data: ClipDataset, config: TrainConfig, env: Dist) -> torch.utils.data.Sampler:
    """Official random order (DistributedSampler, also for one process) or the opt-in hard-negative grouping."""
    if config.hard_negatives > 1:
        return HardNegativeSampler([list(i.captions) for i in data.items], config.hard_negatives, config.batch_size,
                                   env.world, env.rank, config.seed)
    return torch.utils.data.DistributedSampler(data, num_replicas=env.world, rank=env.rank, shuffle=True,
                                               seed=config.seed, drop_last=True)


def epoch_loader(data: ClipDataset, sampler: torch.utils.data.Sampler, config: TrainConfig, epoch: int,
                 local_batch: int, done: int, micro_batches: int) -> ClipLoader:
    """Epoch `epoch`'s micro-batches from number `done` to `micro_batches`; the order depends only on (seed, epoch)."""
    sampler.set_epoch(epoch)
    data.set_epoch(epoch)
    batches = EpochBatches(sampler, local_batch, done, micro_batches)
    # An explicit generator keeps the loader from drawing its base seed from the global RNG (dropout's).
    return ClipLoader(data, batch_sampler=batches, num_workers=0 if config.frame_cache else config.workers,
                      generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))


def val_items(config: TrainConfig) -> list:
    """The validation split's items; none (with a warning) when it does not exist."""
    try:
        return load_split(config.data, config.val_split, layout=config.layout)
    except DataError as exc:
        log.warning("no validation (%s)", exc)
        return []
