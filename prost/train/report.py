"""What a run reports: metrics.jsonl lines, validation R@K after each epoch, and the training.png plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from prost.loss import ranking_mode
from prost.model.prost import ProstModel
from prost.train.config import TrainConfig

log = logging.getLogger(__name__)

METRICS_FILE, PLOT_FILE = "metrics.jsonl", "training.png"


class MetricsLog:
    """metrics.jsonl writer (main rank only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class LossWindow:
    """Loss and throughput since the last metrics line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses, self.clips, self.start = [], 0, time.monotonic()

    def add(self, loss: float, clips: int) -> None:
        self.losses.append(loss)
        self.clips += clips

    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def rate(self) -> float:
        return self.clips / max(time.monotonic() - self.start, 1e-9)


def validate(model: ProstModel, items: list, config: TrainConfig, metrics: MetricsLog, step: int, epoch: int) -> None:
    """Validation R@K of the trained similarity; a run ranked by the full score also logs S_es-only and S_op-only
    R@1."""
    from prost.evaluate import evaluate

    mode = ranking_mode(config.loss)
    result = evaluate(model, items, mode=mode, workers=config.workers, beta_sweep=mode == "full")
    branches = {m: r["t2v"]["R@1"] for m, r in result.get("ablations", {}).items()}
    metrics.write(kind="val", step=step, epoch=epoch, split=config.val_split, mode=mode, loss=config.loss,
                  t2v=result["t2v"], v2t=result["v2t"], **({"branch_t2v_r1": branches} if branches else {}))
    log.info("epoch %d step %d: %s t2v R@1 %.1f R@5 %.1f, v2t R@1 %.1f%s", epoch, step, config.val_split,
             result["t2v"]["R@1"], result["t2v"]["R@5"], result["v2t"]["R@1"],
             "".join(f", S_{m} only t2v R@1 {r:.1f}" for m, r in branches.items()))


def plot_metrics(metrics_path: Path, out: Path) -> None:
    """Training loss and validation R@1 against the optimizer step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["t2v"]["R@1"] for r in val], "o-", color="tab:red",
                 label="val t2v R@1")
        ax2.set_ylabel("validation t2v R@1 (%)", color="tab:red")
    ax.set_title(f"{metrics_path.parent.name}: training loss and validation R@1")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
