"""Retrieval evaluation (`prost eval`): encode each video and caption once, score in bounded memory, R@K/MdR/MnR.

The protocol follows the official evaluation (reference §5): cached prototypes, S = S_es + beta * S_op built in
blocks by `prost.similarity`, standard metrics from `prost.metrics`, a beta sweep over 0.8..1.7 as the official log
prints, the S_es-only and S_op-only ablations, and the transductive Hungarian R@1 only when asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prost.checkpoint import TRAIN_CONFIG_FILE, load_model
from prost.data.datasets import ClipDataset, ClipLoader, load_split
from prost.errors import ConfigError, DataError
from prost.fileio import check_writable, write_json_atomic
from prost.loss import ranking_mode
from prost.metrics import format_table, hungarian_r1, retrieval_metrics
from prost.model.prost import ProstModel, TextPrototypes, VideoPrototypes
from prost.model.similarity import Similarity, similarity

log = logging.getLogger(__name__)

MODES = ("full", "es", "op")
SWEEP_BETAS = tuple(round(0.8 + 0.1 * i, 1) for i in range(10))  # 0.8 .. 1.7, as the official log


def _model_device(model: ProstModel) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def encode_gallery(model: ProstModel, items: Sequence, batch_size: int = 32,
                   workers: int = 0) -> tuple[list[str], VideoPrototypes]:
    """Encode every distinct video of `items` once, decoded as in training (`sample_fps` included); returns the ids
    and prototypes (objects [V, L, No, D]) of the readable ones, in first-occurrence order.

    Unreadable videos are left out with one warning line each and a count, as in training.
    """
    config = model.config
    distinct: dict[str, Any] = {}
    for item in items:
        distinct.setdefault(item.video_id, item)
    dataset = ClipDataset(list(distinct.values()), config.head.num_frames, config.vision.image_size,
                          config.max_words, sample_fps=config.sample_fps)
    if not len(dataset):
        raise DataError("no videos to encode")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    indices, objects, events = [], [], []
    for batch in ClipLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers):
        video = model.encode_video(batch["frames"].to(device))
        indices += batch["video_index"].tolist()
        objects.append(video.objects.float().cpu())
        events.append(video.events.float().cpu())
    model.train(was_training)
    if not indices:
        raise DataError(f"none of the {len(dataset)} videos could be decoded")
    return [dataset.items[i].video_id for i in indices], VideoPrototypes(torch.cat(objects), torch.cat(events))


@torch.inference_mode()
def encode_captions(model: ProstModel, texts: Sequence[str], batch_size: int = 256) -> TextPrototypes:
    """Tokenize (W = config.max_words) and encode captions; returns phrases [T, Np, D] and sentences [T, D]."""
    from prost.tokenizer import tokenize

    if not len(texts):
        raise DataError("no captions to encode")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    phrases, sentences = [], []
    for start in range(0, len(texts), batch_size):
        ids = torch.from_numpy(tokenize(list(texts[start:start + batch_size]), model.config.max_words)).long()
        text = model.encode_text(ids.to(device))
        phrases.append(text.phrases.float().cpu())
        sentences.append(text.sentence.float().cpu())
    model.train(was_training)
    return TextPrototypes(torch.cat(phrases), torch.cat(sentences))


def select(scores: Similarity, mode: str, beta: float) -> torch.Tensor:
    """The matrix a mode ranks by: full = S_es + beta * S_op, es = S_es, op = S_op."""
    if mode == "full":
        return scores.s_es + beta * scores.s_op
    if mode == "es":
        return scores.s_es
    if mode == "op":
        return scores.s_op
    raise ConfigError(f"mode={mode!r}; valid: {', '.join(MODES)}")


def caption_queries(items: Sequence, video_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every caption of `items` whose video is in the gallery, with its video's column (captions may share one)."""
    column = {vid: i for i, vid in enumerate(video_ids)}
    kept = [item for item in items if item.video_id in column]
    texts = [text for item in kept for text in item.captions]
    targets = [column[item.video_id] for item in kept for _ in item.captions]
    return texts, np.asarray(targets, dtype=np.int64)


def evaluate(model: ProstModel, items: Sequence, *, mode: str = "full", beta: float | None = None,
             beta_sweep: bool = False, hungarian: bool = False, batch_size: int = 32, workers: int = 0,
             gallery: tuple[list[str], VideoPrototypes] | None = None) -> dict[str, Any]:
    """Standard t2v/v2t retrieval metrics of `model` on `items` (VideoItems with captions).

    Args:
        mode: "full" (S_es + beta * S_op), "es" or "op" (the ablations).
        beta: weight of S_op for mode "full" (default: the model config's beta).
        beta_sweep: also score beta in 0.8..1.7 and the S_es-only and S_op-only matrices.
        hungarian: add the transductive Hungarian R@1 (one-to-one assignment over all queries), labelled so.
        gallery: precomputed `encode_gallery` output to reuse.
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}; valid: {', '.join(MODES)}")
    beta = model.config.beta if beta is None else float(beta)
    video_ids, videos = gallery if gallery is not None else encode_gallery(model, items, batch_size, workers)
    texts, targets = caption_queries(items, video_ids)
    scores = similarity(encode_captions(model, texts), videos, beta=1.0)  # [T, V]; beta is applied in `select`
    main = select(scores, mode, beta)
    result: dict[str, Any] = {"mode": mode, "beta": beta if mode == "full" else None, "videos": len(video_ids),
                              "captions": len(texts), **retrieval_metrics(main, targets)}
    gallery_ids = set(video_ids)
    missing = [item for item in items if item.video_id not in gallery_ids]
    if missing:  # unreadable videos: the gallery is smaller than the split, so say so in the result
        result["left_out"] = {"videos": len({item.video_id for item in missing}),
                              "captions": sum(len(item.captions) for item in missing)}
        log.warning("left out %(videos)d unreadable videos and their %(captions)d captions", result["left_out"])
    if result["t2v"]["tied"] or result["v2t"]["tied"]:  # the other bound, so a collapsed model cannot hide
        result["pessimistic_ties"] = retrieval_metrics(main, targets, ties="pessimistic")
    if beta_sweep:
        result["beta_sweep"] = [{"beta": b, **retrieval_metrics(select(scores, "full", b), targets)}
                                for b in SWEEP_BETAS]
        result["ablations"] = {m: retrieval_metrics(select(scores, m, beta), targets) for m in ("es", "op")}
    if hungarian:
        result["hungarian"] = {**hungarian_r1(main, targets), "mode": mode, "beta": result["beta"]}
    return result


def report(result: dict[str, Any]) -> str:
    """The printed table of an `evaluate` result."""
    name = result["mode"] if result["mode"] != "full" else f"full beta={result['beta']:g}"
    rows = {name: result}
    for entry in result.get("beta_sweep", []):
        rows[f"full beta={entry['beta']:g}"] = entry
    for mode, entry in result.get("ablations", {}).items():
        rows[f"{mode} only (S_{mode})"] = entry
    text = f"{result['captions']} captions x {result['videos']} videos\n" + format_table(rows)
    for direction in ("t2v", "v2t"):
        if result[direction].get("tied"):
            text += (f"\nwarning: {result[direction]['tied']} {direction} queries tie their ground truth with another "
                     "item (identical captions or videos, or degenerate scores); the table counts ties in the query's "
                     "favour (official rule)")
    if "left_out" in result:
        left_out = result["left_out"]
        text += (f"\nwarning: {left_out['videos']} unreadable videos and their {left_out['captions']} captions are "
                 "left out; these numbers are not comparable with a full split")
    if "pessimistic_ties" in result:
        text += "\nwith ties counted against the query:\n" + format_table({name: result["pessimistic_ties"]})
    if "hungarian" in result:
        h = result["hungarian"]
        text += f"\nR@1 {h['R@1']:.1f}  [{h['label']}]"
    return text


def trained_mode(checkpoint: Path) -> str:
    """The similarity a run was trained on (from its --loss), or "full" for checkpoints without a training config."""
    path = Path(checkpoint) / TRAIN_CONFIG_FILE
    if path.is_file():
        return ranking_mode(json.loads(path.read_text()).get("loss", "full"))
    return "full"


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="text-to-video and video-to-text retrieval metrics of a checkpoint")
    parser.add_argument("--checkpoint", required=True, help="run directory or any checkpoint `load_model` reads")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--layout", default="auto", help="dataset layout (default: auto)")
    parser.add_argument("--beta", type=float, help="weight of S_op in S = S_es + beta * S_op (default: config)")
    parser.add_argument("--beta-sweep", action="store_true", help="also beta 0.8..1.7 and the S_es/S_op ablations")
    parser.add_argument("--mode", choices=("auto", *MODES), default="auto",
                        help="similarity to rank by (auto: the run's --loss, else full)")
    parser.add_argument("--hungarian", action="store_true",
                        help="add the transductive Hungarian one-to-one R@1 (not a standard metric)")
    parser.add_argument("--batch-size", type=int, default=32, help="videos per encoder batch")
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for the encoders (default: cuda when available, else cpu)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.out:
        check_writable(args.out, folder=False)  # before the work: the results would be lost at the end
    model = load_model(args.checkpoint, device=args.device)
    items = load_split(args.data, args.split, layout=args.layout)
    mode = trained_mode(Path(args.checkpoint)) if args.mode == "auto" else args.mode
    result = evaluate(model, items, mode=mode, beta=args.beta, beta_sweep=args.beta_sweep, hungarian=args.hungarian,
                      batch_size=args.batch_size, workers=args.workers)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, **result}
    print(report(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0
