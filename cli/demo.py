"""`make demo`: the whole path on one CPU machine, from synthetic videos to served text search.

Synthesise the dataset, train the tiny model (a finished run is reused), evaluate in-process, export with the parity
gates, build the Triton repository (cpu variant), start Triton, publish the test videos as a gallery version through
gRPC, run every test caption through `prost_text_search`, compare served and in-process R@1/R@5, print example
queries and write `report.html` with thumbnails of each result's matched frame.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from prost_cli.main import main as prost
from prost.config import ProstConfig
from prost.data.datasets import VideoItem, load_split
from prost.data.video import read_frames
from prost.errors import ProstError
from prost.train import STATE_FILE
from prost_client.client import ProstClient
from prost_client.wire import SearchHit
from prost_export.manifest import read_manifest
from prost_model_repository.server import TritonServer, free_ports

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"  # where `make bench` writes its plots

log = logging.getLogger("prost_cli.demo")

EXAMPLES = 3
SERVED_TOLERANCE = 0.5  # points: the gallery stores prototypes in fp16, which can flip near-tied rankings


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.0f} s)", flush=True)


def run(workdir: Path, videos: int, train_minutes: float) -> None:
    data, run_dir, export, repo = (workdir / n for n in ("data", "run", "export", "repository"))
    with step(f"synthetic dataset: {videos} videos in {data}"):
        if (data / "captions.jsonl").is_file():
            print("   reusing the existing dataset")
        else:
            _check(prost(["data", "synth", "--out", str(data), "--videos", str(videos), "--seed", "0"]))
    with step(f"training the tiny preset for at most {train_minutes:g} min"):
        budget = ["--threads", "1", "--max-minutes", str(train_minutes)]
        if _finished(run_dir):
            print(f"   reusing the finished run in {run_dir}")
        elif (run_dir / STATE_FILE).is_file():
            print(f"   continuing the interrupted run in {run_dir} from its last checkpoint")
            _check(prost(["train", "--resume", str(run_dir), *budget]))
        else:
            _check(prost(["train", "--data", str(data), "--preset", "tiny", "--out", str(run_dir), "--precision", "bf16",
                          "--seed", "0", *budget]))
    with step("in-process evaluation on the test split"):
        _check(prost(["eval", "--checkpoint", str(run_dir), "--data", str(data), "--split", "test",
                      "--out", str(workdir / "eval.json")]))
        in_process = json.loads((workdir / "eval.json").read_text())["t2v"]
    with step("export: three ONNX graphs, parity gates on random inputs and on decoded test videos"):
        _check(prost(["export", "--checkpoint", str(run_dir), "--out", str(export), "--data", str(data)]))
    with step("Triton model repository (cpu variant)"):
        _check(prost(["repository", "build", "--export", str(export), "--out", str(repo), "--variant", "cpu"]))
    config = ProstConfig.from_dict(read_manifest(export)["config"])
    items = load_split(data, "test")
    grpc, http, metrics = free_ports(3)
    server = TritonServer(repo, grpc_port=grpc, http_port=http, metrics_port=metrics, log_dir=workdir / "logs")
    with step("starting Triton"):
        server.start()
        print(f"   gRPC {server.url}; log {server.log_path}")
    try:
        with ProstClient(server.url, repository_key=server.repository_key, timeout=120) as client:
            client.wait_ready(timeout=120)
            serve(client, items, repo, config, in_process, workdir)
    finally:
        server.stop()
    print(f"\nserver stopped; logs in {workdir / 'logs'}")


def serve(client: ProstClient, items: list[VideoItem], repo: Path, config: ProstConfig, in_process: dict,
          workdir: Path) -> None:
    """Publish the test videos, search with every test caption, compare with in-process metrics, write the report."""
    ids = [item.video_id for item in items]
    with step(f"publishing {len(items)} test videos as a new gallery version through gRPC"):
        version = client.publish_gallery([item.path for item in items], ids, repository=repo)
        print(f"   prost_gallery version {version} is live")
    queries = [(caption, item.video_id) for item in items for caption in item.captions]
    with step(f"searching {len(queries)} test captions through prost_text_search"):
        hits = client.search([q for q, _ in queries], top_k=10)
    served = served_recall(hits, [truth for _, truth in queries])
    print(f"\n{'t2v':10} {'R@1':>6} {'R@5':>6}\n{'in-process':10} {in_process['R@1']:6.1f} {in_process['R@5']:6.1f}"
          f"\n{'served':10} {served['R@1']:6.1f} {served['R@5']:6.1f}")
    gap = max(abs(served[k] - in_process[k]) for k in ("R@1", "R@5"))
    if gap > SERVED_TOLERANCE:
        raise ProstError(f"served and in-process recall differ by {gap:.2f} points (bound {SERVED_TOLERANCE})")
    print(f"   served and in-process agree (largest difference {gap:.2f} points; fp16 gallery storage)")
    examples = example_queries(queries, hits)
    by_id = {item.video_id: item for item in items}
    for caption, truth, results in examples:
        print(f'\nquery: "{caption}"  (ground truth {truth})')
        for rank, hit in enumerate(results[:5], 1):
            mark = "  <- ground truth" if hit.video_id == truth else ""
            print(f"   {rank}. {hit.video_id:20} {hit.score:.4f}  {by_id[hit.video_id].captions[0]}{mark}")
    report = workdir / "report.html"
    plots = [os.path.relpath(p, workdir.resolve()) for p in sorted(BENCH_DIR.glob("*.png"))]
    report.write_text(render_report(examples, by_id, config, served, in_process, plots))
    print(f"\nwrote {report}")


def served_recall(hits: list[list[SearchHit]], truths: list[str]) -> dict[str, float]:
    """R@1 and R@5 of served top-10 lists (the rank of the ground truth among the returned ids)."""
    ranks = [next((r for r, hit in enumerate(result) if hit.video_id == truth), 10) for result, truth in zip(hits, truths)]
    return {f"R@{k}": 100.0 * float(np.mean(np.asarray(ranks) < k)) for k in (1, 5)}


def example_queries(queries: list[tuple[str, str]], hits: list[list[SearchHit]]) -> list:
    """Three queries with distinct ground truths, spread over the test split."""
    picks = np.linspace(0, len(queries) - 1, EXAMPLES).astype(int)
    return [(queries[i][0], queries[i][1], hits[i]) for i in picks]


def matched_frame(hit: SearchHit) -> int:
    """The sampled frame most phrase prototypes matched best: the frame that explains the result."""
    return Counter(hit.matched_frames).most_common(1)[0][0]


def thumbnail(item: VideoItem, config: ProstConfig, frame: int, size: int = 96) -> str:
    """A PNG data URI of sampled frame `frame` of a video, decoded exactly as for the model."""
    frames, _ = read_frames(item.path, config.head.num_frames, size, item.start, item.end, sample_fps=config.sample_fps)
    buffer = io.BytesIO()
    Image.fromarray(frames[min(frame, len(frames) - 1)]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_report(examples: list, by_id: dict[str, VideoItem], config: ProstConfig, served: dict,
                  in_process: dict, plots: list[str]) -> str:
    """An HTML page: each example query, its top 5 with the matched frame of each result, then the speed plots of
    `make bench` (paths relative to the page) when they exist."""
    sections = []
    for caption, truth, results in examples:
        cards = []
        for rank, hit in enumerate(results[:5], 1):
            frame = matched_frame(hit)
            css = "card truth" if hit.video_id == truth else "card"
            cards.append(
                f'<div class="{css}"><img src="{thumbnail(by_id[hit.video_id], config, frame)}" width="96" height="96">'
                f"<div><b>{rank}. {html.escape(hit.video_id)}</b> S={hit.score:.3f}</div>"
                f"<div>matched frame {frame}</div><div class=cap>{html.escape(by_id[hit.video_id].captions[0])}</div>"
                "</div>"
            )
        sections.append(f"<h2>&ldquo;{html.escape(caption)}&rdquo;</h2><div class=row>{''.join(cards)}</div>")
    speed = ("<h2>Speed (<code>make bench</code>, bench/report.md)</h2>"
             + "".join(f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" width="640"></a>' for p in plots)
             if plots else "")
    style = ("body{font-family:sans-serif;margin:24px;background:#fafafa}.row{display:flex;gap:12px}"
             ".card{width:170px;padding:8px;border:2px solid #ddd;border-radius:6px;background:#fff;font-size:12px}"
             ".truth{border-color:#2a2}.cap{color:#555;margin-top:4px}img{image-rendering:pixelated}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>ProST demo</title><style>{style}</style></head>"
            f"<body><h1>ProST text-to-video search (Triton, cpu variant)</h1>"
            f"<p>Test split t2v: served R@1 {served['R@1']:.1f} / R@5 {served['R@5']:.1f}; in-process R@1 "
            f"{in_process['R@1']:.1f} / R@5 {in_process['R@5']:.1f}. Green: the ground-truth video. Each thumbnail is "
            f"the sampled frame that most phrase prototypes matched best.</p>{''.join(sections)}{speed}</body></html>")


def _finished(run_dir: Path) -> bool:
    """A run whose metrics end with a completed `end` record (stopped by time budget counts as finished)."""
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "model.safetensors").is_file() or not metrics.is_file():
        return False
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return bool(lines) and lines[-1].get("kind") == "end"


def _check(code: int) -> None:
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prost_cli.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo"))
    parser.add_argument("--videos", type=int, default=3000, help="synthetic videos (600 test at the default)")
    parser.add_argument("--train-minutes", type=float, default=9.0, help="training time budget")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        run(args.workdir, args.videos, args.train_minutes)
    except ProstError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
