"""Training (`prost train`): the official ProST recipe driven by a `TrainConfig`, resumable step for step.

Recipe: the four InfoNCE terms over S_es and S_op (`prost.loss`), AdamW with the official groups, warmup-cosine and
per-tensor clipping (`prost.optim`), batch-global negatives across DDP ranks. Defaults depend on the starting point:
official with `--clip-weights` or `--init`, a higher lr for every parameter from scratch (`config.PRETRAINED_DEFAULTS`).
A run directory holds model.safetensors + config.json, train_config.json, train_state.pt (loads with
weights_only=True), metrics.jsonl and training.png; batches depend only on (seed, epoch), so `--resume` is exact.
Modules, each importing only those before it: config, state, data, report, loop, cli.
"""

from prost.train.cli import register_cli
from prost.train.config import (CLIP_MODES, LOSSES, PRECISIONS, PRETRAINED_CLIP_LR_COEF, PRETRAINED_DEFAULTS,
                                PRETRAINED_EPOCHS, PRETRAINED_LR, SCRATCH_CLIP_LR_COEF, SCRATCH_EPOCHS, SCRATCH_LR,
                                TrainConfig)
from prost.train.data import FRAME_CACHE_MAX_BYTES, load_training_clips
from prost.train.loop import Encoders, Trainer, contrastive_loss, train
from prost.train.report import METRICS_FILE, PLOT_FILE, MetricsLog, plot_metrics
from prost.train.state import (STATE_FILE, TRAIN_CONFIG_FILE, build_model, rank_rng_states, read_train_state,
                               rng_state, save_run, seed_everything, set_rng_state)

__all__ = [
    "CLIP_MODES", "FRAME_CACHE_MAX_BYTES", "LOSSES", "METRICS_FILE", "PLOT_FILE", "PRECISIONS",
    "PRETRAINED_CLIP_LR_COEF", "PRETRAINED_DEFAULTS", "PRETRAINED_EPOCHS", "PRETRAINED_LR", "SCRATCH_CLIP_LR_COEF",
    "SCRATCH_EPOCHS", "SCRATCH_LR", "STATE_FILE", "TRAIN_CONFIG_FILE", "Encoders", "MetricsLog", "TrainConfig",
    "Trainer", "build_model", "contrastive_loss", "load_training_clips", "plot_metrics", "rank_rng_states",
    "read_train_state", "register_cli", "rng_state", "save_run", "seed_everything", "set_rng_state", "train",
]
