"""Exact scoring speed at ViT-B/32 shapes (L 12, No 12, Np 28, Ne 3, D 512): text-video pairs per second of the
official scoring, `prost.similarity` in fp32 and bf16, and the gallery engine's exact stage (the similarity graph on
ONNX Runtime over the memory-mapped fp16 store; torch's bf16 GEMM over a bf16 store), each as GFLOP/s and as a
fraction of the matching GEMM limit.

The reference is the official `get_similarity_logits` as its evaluation runs it: normalise, einsum
'aid,bfjd->abfij' over chunks of 250 videos and 32 texts, then the maxes and the mean.

    .venv/bin/python bench/similarity.py [--videos 1000,10000] [--texts 1,32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from limits import median_seconds  # noqa: E402
from scale import STAMP, VITB, VITB_DIMS, similarity_graph  # noqa: E402

import prost  # noqa: E402
from prost.gallery import build as B  # noqa: E402
from prost.gallery.engine import GalleryEngine, bf16_unavailable, make_scorer, similarity_session  # noqa: E402
from prost.gallery.store import load_version  # noqa: E402
from prost.model.similarity import DEFAULT_BLOCK_ELEMENTS, l2_normalize  # noqa: E402
from prost_client import gallery_format as G  # noqa: E402

OFFICIAL_VIDEO_CHUNK, OFFICIAL_TEXT_CHUNK = 250, 32
TOP_K = 10


def official(phrases: torch.Tensor, sentence: torch.Tensor, objects: torch.Tensor, events: torch.Tensor,
             beta: float = 1.0) -> torch.Tensor:
    """S [T, V] computed as the official evaluation does (reference §2): einsum over [T, V, L, Np, No] blocks."""
    rows = []
    for t0 in range(0, len(phrases), OFFICIAL_TEXT_CHUNK):
        p, s = F.normalize(phrases[t0:t0 + OFFICIAL_TEXT_CHUNK], dim=-1), F.normalize(
            sentence[t0:t0 + OFFICIAL_TEXT_CHUNK], dim=-1)
        row = []
        for v0 in range(0, len(objects), OFFICIAL_VIDEO_CHUNK):
            o = F.normalize(objects[v0:v0 + OFFICIAL_VIDEO_CHUNK], dim=-1)
            e = F.normalize(events[v0:v0 + OFFICIAL_VIDEO_CHUNK], dim=-1)
            s_op = torch.einsum("aid,bfjd->abfij", p, o).amax(dim=-2).amax(dim=-2).mean(dim=-1)
            s_es = torch.einsum("ad,bkd->abk", s, e).amax(dim=-1)
            row.append(s_es + beta * s_op)
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows)


def flops(texts: int, videos: int) -> float:
    """Multiply-adds x 2 of S for texts x videos pairs (the S_op GEMM dominates: 2.06M MAC per pair)."""
    (n_l, n_o, d), (n_e, _) = VITB_DIMS
    return 2.0 * texts * videos * d * (VITB["phrases"] * n_l * n_o + n_e + 1)


def max_abs_diff(scores: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference from the official S [T, V]; a [T, k] result is compared with the official top k."""
    if scores.shape != expected.shape:
        expected = expected.topk(scores.shape[1], dim=1).values
    return float((scores.float() - expected).abs().max())


def run(videos: list[int], texts: list[int], limits: dict, work: Path, repeats: int = 3) -> list[dict]:
    """One row per (method, videos, texts): seconds, pairs/s, GFLOP/s, fraction of the limit, ratio to official."""
    g = torch.Generator().manual_seed(0)
    (n_l, n_o, d), (n_e, _) = VITB_DIMS
    rows = []
    for n_v in videos:
        objects = l2_normalize(torch.randn(n_v, n_l, n_o, d, generator=g)).half().float()  # as the store rounds
        events = l2_normalize(torch.randn(n_v, n_e, d, generator=g)).half().float()
        engines = {}
        stores = [d for d in G.OBJECT_DTYPES if d != "bf16" or bf16_unavailable() is None]  # bf16: torch's GEMM
        for dtype in stores:  # random vectors tie, so the bf16 store is built without its recall gate
            version = work / f"gallery-{n_v}-{dtype}"
            B.build_version(version, B.ArrayPrototypes([f"v{i}" for i in range(n_v)], objects.numpy(),
                                                       events.numpy()),
                            video_encoder=STAMP, objects_dims=VITB_DIMS[0], events_dims=VITB_DIMS[1], index=False,
                            objects_dtype=dtype, gate=False, progress=False)
            graph = similarity_graph(*VITB_DIMS, VITB["phrases"], version / "similarity.onnx")
            scorer, _ = make_scorer(dtype, similarity_session(graph), 1.0, DEFAULT_BLOCK_ELEMENTS)
            engines[dtype] = GalleryEngine(load_version(version, *VITB_DIMS, STAMP), scorer, 1.0,
                                           DEFAULT_BLOCK_ELEMENTS)
        video = prost.VideoPrototypes(objects, events)
        for n_t in texts:
            phrases = l2_normalize(torch.randn(n_t, VITB["phrases"], d, generator=g))
            sentence = l2_normalize(torch.randn(n_t, d, generator=g))
            text = prost.TextPrototypes(phrases, sentence)
            methods = {
                "official (fp32)": (lambda: official(phrases, sentence, objects, events), "fp32"),
                "prost.similarity fp32": (lambda: prost.similarity(text, video).total, "fp32"),
                "prost.similarity bf16": (lambda: prost.similarity(text, video, compute="bf16").total, "bf16"),
                "gallery engine exact (fp16 store, ORT fp32)": (
                    lambda: engines["fp16"].search(phrases.numpy(), sentence.numpy(), TOP_K, mode="exact").scores,
                    "fp32"),
            }
            if "bf16" in engines:
                methods["gallery engine exact (bf16 store, torch bf16)"] = (
                    lambda: engines["bf16"].search(phrases.numpy(), sentence.numpy(), TOP_K, mode="exact").scores,
                    "bf16")
            reference, expected = None, official(phrases, sentence, objects, events)
            for name, (fn, dtype) in methods.items():
                seconds = median_seconds(fn, repeats)
                reference = reference or seconds
                rate = flops(n_t, n_v) / seconds / 1e9
                rows.append({"method": name, "videos": n_v, "texts": n_t, "seconds": round(seconds, 4),
                             "pairs_per_s": round(n_t * n_v / seconds), "gflops": round(rate, 1),
                             "dtype": dtype, "fraction_of_limit": round(rate / limits["gemm_gflops"][dtype], 3),
                             "speedup_vs_official": round(reference / seconds, 2),
                             "max_abs_diff": max_abs_diff(torch.as_tensor(fn()), expected)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from limits import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="1000,10000", help="gallery sizes (default 1000,10000)")
    parser.add_argument("--texts", default="1,32", help="texts per call (default 1,32)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prost-bench-sim-") as tmp:
        run([int(v) for v in args.videos.split(",")], [int(t) for t in args.texts.split(",")], measure(), Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
