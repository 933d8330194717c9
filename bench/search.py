"""Served search against in-process search: latency and throughput of `prost_text_search` over gRPC, each as a ratio
to the same queries answered by the `prost` package in this process, measured in the same run.

    .venv/bin/python bench/search.py [--videos 5000] [--queries 200] [--concurrency 4] [--checkpoint RUN]

The gallery is random unit prototypes (speed does not depend on their values), stored in fp16 by the server; the
in-process reference scores the same fp16-rounded values in fp32 with `prost.similarity`, so both rank alike, and the
top-1 agreement is reported beside the timings. Weights are random unless `--checkpoint` is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import prost
from prost.data.synthetic import caption, make_family
from prost.evaluate import encode_captions
from prost.model.similarity import l2_normalize
from prost_client.client import ProstClient
from prost_export.onnx import export_onnx
from prost_model_repository.writer import write_repository
from prost_model_repository.server import TritonServer, free_ports

TOP_K = 10


def random_gallery(config: prost.ProstConfig, videos: int, seed: int) -> prost.VideoPrototypes:
    """Unit-norm object and event prototypes, rounded to fp16 as the served gallery stores them."""
    g = torch.Generator().manual_seed(seed)
    h, d = config.head, config.embed_dim
    objects = torch.randn(videos, h.num_frames, h.num_objects, d, generator=g)
    events = torch.randn(videos, h.num_events, d, generator=g)
    unit = [l2_normalize(x).half().float() for x in (objects, events)]
    return prost.VideoPrototypes(*unit)


def in_process_search(model: prost.ProstModel, gallery: prost.VideoPrototypes, texts: list[str]) -> list[list[int]]:
    """Top-k gallery rows of each text: encode, score S = S_es + beta * S_op, rank."""
    scores = prost.similarity(encode_captions(model, texts), gallery, beta=model.config.beta).total
    return scores.topk(min(TOP_K, scores.shape[1]), dim=1).indices.tolist()


def unique_captions(count: int) -> list[str]:
    """`count` distinct synthetic captions: the served response cache never answers a timed query."""
    texts: dict[str, None] = {}
    family = 0
    while len(texts) < count:
        for scene in make_family(0, family):
            texts.update(dict.fromkeys([caption(scene), caption(scene, paraphrase=True)]))
        family += 1
    return list(texts)[:count]


Search = Callable[[list[str]], object]


def latencies(search: Search, texts: list[str]) -> list[float]:
    """Seconds of each one-text search, one at a time."""
    out = []
    for text in texts:
        start = time.perf_counter()
        search([text])
        out.append(time.perf_counter() - start)
    return out


def rate(search: Search, texts: list[str], batch: int = 1, callers: int = 1) -> float:
    """Queries per second over `texts`, `batch` texts per call, from `callers` threads."""
    calls = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    with ThreadPoolExecutor(callers) as pool:
        start = time.perf_counter()
        list(pool.map(search, calls))
        return len(texts) / (time.perf_counter() - start)


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and 95th percentile, in milliseconds."""
    ordered = sorted(seconds)
    return {"p50_ms": 1e3 * statistics.median(ordered), "p95_ms": 1e3 * ordered[int(0.95 * (len(ordered) - 1))]}


def measure(search: Search, texts: list[list[str]], batch: int, callers: int, threads: int) -> dict[str, float]:
    """Latency one query at a time, then throughput in batches and from concurrent callers, each on fresh texts.

    Concurrent callers in this process share `threads` torch threads between them, as a tuned in-process server would
    (each caller taking all of them would oversubscribe the cores); the served side gets the same callers.
    """
    single, batched, concurrent = texts
    figures = {**summary(latencies(search, single)), "batched_qps": rate(search, batched, batch=batch)}
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        figures["concurrent_qps"] = rate(search, concurrent, callers=callers)
    finally:
        torch.set_num_threads(default)
    return figures


def run(args: argparse.Namespace, work: Path) -> dict:
    """Build and serve a random model, publish a random gallery, and measure both paths on the same queries."""
    model = prost.load_model(args.checkpoint) if args.checkpoint else prost.create_model(args.preset, seed=0)
    model.eval()
    export = export_onnx(model, work / "export", parity=False)
    repo = write_repository(export, work / "repository", "cpu", intra_op_threads=args.intra_op_threads)
    gallery = random_gallery(model.config, args.videos, seed=1)
    ids = [f"v{i:06d}" for i in range(args.videos)]
    q = args.queries
    warm, *timed = (unique_captions(4 * q)[i * q:(i + 1) * q] for i in range(4))
    per_caller = max(1, torch.get_num_threads() // args.concurrency)

    grpc, http, metrics = free_ports(3)
    with TritonServer(repo, grpc_port=grpc, http_port=http, metrics_port=metrics, log_dir=work / "logs") as server, \
            ProstClient(server.url, repository_key=server.repository_key, timeout=300) as client:
        client.wait_ready(timeout=300)
        client.publish_prototypes(ids, gallery.objects.numpy(), gallery.events.numpy(), repository=repo)

        def local(texts: list[str]) -> list[list[int]]:
            return in_process_search(model, gallery, texts)

        def served(texts: list[str]) -> list[list[int]]:
            return [[position[hit.video_id] for hit in hits] for hits in client.search(texts, top_k=TOP_K)]

        position = {v: i for i, v in enumerate(ids)}  # the warm-up: both paths answer the same queries
        agreement = float(np.mean([r[0] == s[0] for r, s in zip(local(warm), served(warm))]))
        return {"videos": args.videos, "queries": q, "batch": args.batch, "callers": args.concurrency,
                "intra_op_threads": args.intra_op_threads,
                "torch_threads": torch.get_num_threads(), "torch_threads_per_caller": per_caller,
                "top1_agreement": agreement,
                "in_process": measure(local, timed, args.batch, args.concurrency, per_caller),
                "served": measure(served, timed, args.batch, args.concurrency, per_caller)}


def report(result: dict) -> str:
    """The figures as a table: each row's two values and their ratio, with the direction that is better."""
    local, served = result["in_process"], result["served"]
    rows = [("one query per call, p50 ms (lower wins)", "p50_ms"),
            ("one query per call, p95 ms (lower wins)", "p95_ms"),
            (f"batches of {result['batch']}, queries/s (higher wins)", "batched_qps"),
            (f"{result['callers']} concurrent callers, queries/s (higher wins)", "concurrent_qps")]
    lines = [f"{result['queries']} distinct queries per row against {result['videos']} videos, top {TOP_K}; "
             f"top-1 agreement {100 * result['top1_agreement']:.1f}%; torch threads {result['torch_threads']} "
             f"({result['torch_threads_per_caller']} per concurrent caller)",
             f"{'':46} {'in-process':>10} {'served':>10} {'served/in-process':>18}"]
    lines += [f"{name:46} {local[key]:10.2f} {served[key]:10.2f} {served[key] / local[key]:18.2f}"
              for name, key in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=5000, help="gallery size (default 5000)")
    parser.add_argument("--queries", type=int, default=200, help="distinct synthetic captions (default 200)")
    parser.add_argument("--batch", type=int, default=32, help="texts per batched call (default 32)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel one-query callers (default 4)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ONNX Runtime threads of each served python model (default 0: ONNX Runtime's choice)")
    parser.add_argument("--preset", default="tiny", help="architecture of the random model (default tiny)")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prost-bench-") as tmp:
        result = run(args, Path(tmp))
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
