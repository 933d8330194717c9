"""Served search against in-process search: latency and throughput of `prost_text_search` over gRPC, each as a ratio
to the same queries answered by the `prost` package in this process, measured in the same run.

    .venv/bin/python bench/search.py [--videos 5000] [--queries 200] [--concurrency 1,4,16,64] [--checkpoint RUN]

The gallery is random unit prototypes (speed does not depend on their values), stored in fp16 by the server; the
in-process reference scores the same fp16-rounded values in fp32 with `prost.similarity`, so both rank alike, and the
top-1 agreement is reported beside the timings. Weights are random unless `--checkpoint` is given. Throughput at
each concurrency comes from bench/loadgen.py's closed loop (the reliability suite's load generator): in process, each
caller's search runs in a worker thread with the torch threads shared between the callers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

import prost
from prost.data.synthetic import caption, make_family
from prost.evaluate import encode_captions
from prost.model.similarity import l2_normalize
from prost_client import protocol as P
from prost_client.client import ProstClient
from prost_export.onnx import export_onnx
from prost_model_repository.writer import RepositoryOptions, write_repository
from prost_model_repository.server import TritonServer, free_ports

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import LoadResult, closed_loop  # noqa: E402

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


def batched_rate(search: Search, texts: list[str], batch: int) -> float:
    """Queries per second over `texts`, `batch` texts per call, one call at a time."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        search(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and 99th percentile, in milliseconds."""
    ordered = sorted(seconds)
    return {"p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))]}


def concurrent_rate(search: Search, texts: list[str], callers: int, seconds: float) -> float:
    """Queries per second from `callers` closed-loop callers (one text per call, each in its own thread) for
    at most `seconds` or `len(texts)` calls; torch's threads are shared between the callers meanwhile, as a tuned
    in-process server would share them (each caller taking all of them would oversubscribe the cores)."""
    default = torch.get_num_threads()
    torch.set_num_threads(max(1, default // callers))

    async def load() -> LoadResult:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(callers) as pool:  # one thread per caller (asyncio's default pool has min(32, CPUs+4))
            return await closed_loop(lambda i: loop.run_in_executor(pool, search, [texts[i]]), callers, seconds,
                                     max_requests=len(texts))

    try:
        result = asyncio.run(load())
    finally:
        torch.set_num_threads(default)
    if result.failed:
        raise RuntimeError(f"{result.failed} of {result.sent} calls failed: {dict(result.errors)}")
    return result.ok / result.seconds


def measure(search: Search, texts: list[list[str]], batch: int, concurrency: list[int],
            seconds: float) -> dict[str, float]:
    """Latency one query at a time, then throughput in batches and at each concurrency, each on fresh texts."""
    single, batched, concurrent = texts
    figures = {**summary(latencies(search, single)), "batched_qps": batched_rate(search, batched, batch)}
    for callers in concurrency:
        figures[f"qps_at_{callers}"] = concurrent_rate(search, concurrent, callers, seconds)
    return figures


SEARCH_STEPS = (P.TEXT_SEARCH_MODEL, P.TOKENIZER_MODEL, P.TEXT_MODEL, P.GALLERY_MODEL)


def where_time_goes(url: str, queries: Callable[[], object]) -> dict[str, dict[str, float]]:
    """Triton's own statistics over `queries` (one query per call): per model of prost_text_search, milliseconds per
    request queued and computing, and requests per execution (the dynamic batch); for the ensemble, the total."""
    def snapshot() -> dict[str, dict]:
        with grpcclient.InferenceServerClient(url) as triton:
            return {m: triton.get_inference_statistics(m, as_json=True)["model_stats"][-1] for m in SEARCH_STEPS}

    before = snapshot()
    queries()
    after = snapshot()
    out = {}
    for model in SEARCH_STEPS:
        def delta(key: str, field: str = "ns") -> float:
            return float(after[model]["inference_stats"][key].get(field, 0)) - float(
                before[model]["inference_stats"][key].get(field, 0))

        requests = max(delta("success", "count"), 1.0)
        executions = float(after[model].get("execution_count", 0)) - float(before[model].get("execution_count", 0))
        compute = sum(delta(k) for k in ("compute_input", "compute_infer", "compute_output"))
        out[model] = {"total_ms": round(delta("success") / requests / 1e6, 3),
                      "queue_ms": round(delta("queue") / requests / 1e6, 3),
                      "compute_ms": round(compute / requests / 1e6, 3),
                      "requests_per_execution": round(requests / executions, 2) if executions else 0.0}
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    """Build and serve a random model, publish a random gallery, and measure both paths on the same queries."""
    model = prost.load_model(args.checkpoint) if args.checkpoint else prost.create_model(args.preset, seed=0)
    model.eval()
    export = export_onnx(model, work / "export", parity=False)
    repo = write_repository(export, work / "repository", "cpu", intra_op_threads=args.intra_op_threads,
                            queue_delay_us=args.queue_delay_us)
    gallery = random_gallery(model.config, args.videos, seed=1)
    ids = [f"v{i:06d}" for i in range(args.videos)]
    q = args.queries
    warm, profiled, *timed = (unique_captions(5 * q)[i * q:(i + 1) * q] for i in range(5))
    concurrency = [int(c) for c in args.concurrency.split(",")]

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
        profile = where_time_goes(server.url, lambda: latencies(served, profiled))
        return {"profile": profile, "videos": args.videos, "queries": q, "batch": args.batch,
                "concurrency": concurrency, "intra_op_threads": args.intra_op_threads,
                "queue_delay_us": args.queue_delay_us, "torch_threads": torch.get_num_threads(),
                "top1_agreement": agreement,
                "in_process": measure(local, timed, args.batch, concurrency, args.seconds),
                "served": measure(served, timed, args.batch, concurrency, args.seconds)}


def report(result: dict) -> str:
    """The figures as a table: each row's two values and their ratio, with the direction that is better."""
    local, served = result["in_process"], result["served"]
    rows = [("one query per call, p50 ms (lower wins)", "p50_ms"),
            ("one query per call, p99 ms (lower wins)", "p99_ms"),
            (f"batches of {result['batch']}, queries/s (higher wins)", "batched_qps")]
    rows += [(f"{c} concurrent callers, queries/s (higher wins)", f"qps_at_{c}") for c in result["concurrency"]]
    lines = [f"{result['queries']} distinct queries per row against {result['videos']} videos, top {TOP_K}; "
             f"top-1 agreement {100 * result['top1_agreement']:.1f}%; torch threads {result['torch_threads']} "
             f"(shared by concurrent callers)",
             f"{'':46} {'in-process':>10} {'served':>10} {'served/in-process':>18}"]
    lines += [f"{name:46} {local[key]:10.2f} {served[key]:10.2f} {served[key] / local[key]:18.2f}"
              for name, key in rows]
    lines += ["", f"where a served query's time goes (Triton's statistics over {result['queries']} single queries, "
              f"ms per request):", f"{'model':22} {'total':>8} {'queued':>8} {'compute':>8} {'batch':>6}"]
    for model, row in result["profile"].items():  # an ensemble's own queue and compute figures add nothing
        parts = ("-", "-", "-") if model == P.TEXT_SEARCH_MODEL else (
            f"{row['queue_ms']:.2f}", f"{row['compute_ms']:.2f}", f"{row['requests_per_execution']:.2f}")
        lines.append(f"{model:22} {row['total_ms']:8.2f} {parts[0]:>8} {parts[1]:>8} {parts[2]:>6}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=5000, help="gallery size (default 5000)")
    parser.add_argument("--queries", type=int, default=200, help="distinct synthetic captions (default 200)")
    parser.add_argument("--batch", type=int, default=32, help="texts per batched call (default 32)")
    parser.add_argument("--concurrency", default="1,4,16,64",
                        help="closed-loop one-query callers, a comma-separated sweep (default 1,4,16,64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per concurrency level (default 5)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ONNX Runtime threads of each served python model (default 0: ONNX Runtime's choice)")
    parser.add_argument("--queue-delay-us", type=int, default=RepositoryOptions().queue_delay_us,
                        help="dynamic batcher delay of the served models (default: the repository's)")
    parser.add_argument("--preset", default="tiny", help="architecture of the random model (default tiny)")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prost-bench-") as tmp:
        result = run(args, Path(tmp))
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
