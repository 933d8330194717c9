"""Gallery scale: recall against exact S, latency, memory, disk and build time of two-stage galleries (issue 13).

    .venv/bin/python bench/scale.py --out scale --workdir /big/disk \
        --export RUN_EXPORT --data DATA --pool POOL.safetensors [--sizes 10000,100000,1000000]

Two settings, each at every size:
- tiny: realistic prototypes. `--pool` holds prototypes of real encoded synthetic videos (`prost gallery encode`),
  `--data` the test split whose captions are the queries (its videos are in the gallery). The gallery is the test
  videos, then the pool, then distractors derived from the pool (`prost.gallery.distractors.Grown`) up to the size.
- vit-b-32: random unit vectors at ViT-B/32 shapes (L 12, No 12, Np 28, Ne 3, D 512) for videos and queries, the
  hardest case for ANN (neighbours barely nearer than the rest); its exact ground truth stops at --exact-limit.
Search runs in a child process per version (`--probe`), so peak RSS is the engine's alone. Writes scale/report.md,
scale/report.json and scale/recall_latency.png. `--smoke` runs both settings at a few hundred videos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prost.gallery import build as B
from prost.gallery.distractors import Grown, RandomUnit, unit
from prost.gallery.engine import GalleryEngine, OnnxScorer, similarity_session
from prost.gallery import store as S
from prost.gallery.store import SearchParams, load_version
from prost.model.similarity import DEFAULT_BLOCK_ELEMENTS

TOP_K = 10
STAMP = "bench"  # the video encoder stamp of bench galleries
# (nprobe, candidates) settings for the recall-latency curve; each stops at rerank 256 (the default)
SWEEP = ((2, 64), (4, 128), (8, 256), (16, 512), (32, 1024))
VITB = {"objects": (12, 12, 512), "events": (3, 512), "phrases": 28}
VITB_DIMS = (VITB["objects"], VITB["events"])


def random_queries(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    d = VITB["events"][1]
    return (unit(rng.standard_normal((count, VITB["phrases"], d), np.float32)),
            unit(rng.standard_normal((count, d), np.float32)))


def similarity_graph(objects_dims, events_dims, phrases: int, path: Path) -> Path:
    """The parameter-free similarity graph at the given dims, with fp16 prototype inputs as a repository holds it."""
    import prost
    from prost_client import protocol as P
    from prost_export.graphs import SimilarityGraph
    from prost_export.onnx import export_graph
    from prost_export.specs import graph_specs
    from prost_model_repository.graph_rewrite import with_float16_inputs

    preset = json.loads((Path(prost.__file__).parent / "presets" / "tiny.json").read_text())
    head = {**preset["head"], "num_frames": objects_dims[0], "num_objects": objects_dims[1],
            "num_events": events_dims[0], "num_phrases": phrases}
    config = prost.ProstConfig.from_dict({**preset, "embed_dim": objects_dims[-1], "head": head})
    raw = path.with_suffix(".fp32.onnx")
    export_graph(SimilarityGraph(), graph_specs(config)["similarity"], raw)
    path.write_bytes(with_float16_inputs(raw, (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)))
    raw.unlink()
    return path


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


# -- the child: load a version, time searches, report RSS ----------------------------------------------------------
def probe(args: argparse.Namespace) -> None:
    faiss = S.faiss_module()
    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    version = load_version(args.probe, *json.loads(args.dims), STAMP)
    session = similarity_session(args.probe / "similarity.onnx", args.threads)
    engine = GalleryEngine(version, OnnxScorer(session, 1.0), 1.0, DEFAULT_BLOCK_ELEMENTS, args.threads)
    load_s = time.perf_counter() - started
    q = np.load(args.queries_file)
    phrases, sentence = q["phrases"], q["sentence"]
    out = {"load_s": load_s, "mode": engine.mode, "settings": []}
    for nprobe, candidates in json.loads(args.sweep):
        params = SearchParams(**{**asdict(version.params), "nprobe": nprobe, "candidates": candidates})
        engine.search(phrases[:2], sentence[:2], TOP_K, params=params)  # warm-up
        rows, times = [], []
        for i in range(len(phrases)):
            t0 = time.perf_counter()
            rows.append(engine.search(phrases[i:i + 1], sentence[i:i + 1], TOP_K, params=params).rows[0].tolist())
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batches = 0
        for i in range(0, len(phrases) - 31, 32):
            engine.search(phrases[i:i + 32], sentence[i:i + 32], TOP_K, params=params)
            batches += 1
        batch_qps = batches * 32 / (time.perf_counter() - t0) if batches else None
        times.sort()
        out["settings"].append({"nprobe": nprobe, "candidates": candidates, "rows": rows,
                                "p50_ms": 1000 * statistics.median(times),
                                "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
                                "batch32_qps": batch_qps})
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out["peak_rss_gib"] = int(status["VmHWM"].split()[0]) / 2 ** 20
    out["rss_anon_gib"] = int(status["RssAnon"].split()[0]) / 2 ** 20
    out["rss_file_gib"] = int(status["RssFile"].split()[0]) / 2 ** 20
    Path(args.result).write_text(json.dumps(out))


def run_probe(version: Path, dims, phrases, sentence, sweep, threads: int, work: Path) -> dict:
    np.savez(work / "queries.npz", phrases=phrases, sentence=sentence)
    result = work / "probe.json"
    subprocess.run([sys.executable, __file__, "--probe", str(version), "--dims", json.dumps(dims), "--queries-file",
                    str(work / "queries.npz"), "--sweep", json.dumps(list(sweep)), "--threads", str(threads),
                    "--result", str(result)], check=True)
    return json.loads(result.read_text())


def median_probe(runs: list[dict]) -> dict:
    """One probe result from runs of the same probe: per setting the median p50, p99 and batch rate (and each run's
    p50), the largest load time and RSS; the rows of the first run (search is deterministic)."""
    settings = []
    for i, first in enumerate(runs[0]["settings"]):
        each = [run["settings"][i] for run in runs]
        qps = [s["batch32_qps"] for s in each if s["batch32_qps"] is not None]
        settings.append({**first, "p50_ms": statistics.median(s["p50_ms"] for s in each),
                         "p99_ms": statistics.median(s["p99_ms"] for s in each),
                         "batch32_qps": statistics.median(qps) if qps else None,
                         "p50_runs_ms": [s["p50_ms"] for s in each]})
    return {**{key: max(run[key] for run in runs) for key in ("load_s", "peak_rss_gib", "rss_anon_gib")},
            "settings": settings}


def exact_top(version: Path, dims, phrases, sentence) -> np.ndarray:
    """Exact top-k gallery rows per query (the engine's exact mode over the fp16 store)."""
    scorer = OnnxScorer(similarity_session(version / "similarity.onnx"), 1.0)
    engine = GalleryEngine(load_version(version, *dims, STAMP), scorer, 1.0, DEFAULT_BLOCK_ELEMENTS)
    return np.concatenate([engine.search(phrases[i:i + 64], sentence[i:i + 64], TOP_K, mode="exact").rows
                           for i in range(0, len(phrases), 64)])


def recall(exact: np.ndarray, rows: list[list[int]], k: int) -> float:
    """|approximate top-k ∩ exact top-k| / k, k at most the gallery size."""
    return float(np.mean([len(set(e[:k]) & set(r[:k])) / len(e[:k]) for e, r in zip(exact, rows)]))


def run_setting(name: str, pool, queries, sizes: list[int], args, work: Path, rows_out: list[dict],
                truth_ids=None) -> None:
    """Build, probe and score one setting at every size, appending rows to `rows_out` and rewriting the report after
    each size (a long run keeps what it measured)."""
    phrases, sentence = queries
    shapes = (pool.objects.shape[1:], pool.events.shape[1:]) if pool is not None else VITB_DIMS
    dims = [list(shapes[0]), list(shapes[1])]
    for size in sizes:
        version = work / f"{name}-{size}"
        grown = Grown(pool, size, seed=args.seed) if pool is not None else RandomUnit(size, *VITB_DIMS, args.seed)
        codes_only = size > args.exact_limit  # vit-b-32 at 1M: the fp16 store would be 147 GB
        reused = args.reuse and (version / S.GALLERY_FILE).is_file()  # kept by an earlier run: probed again
        build_s = None  # not measured for a reused version
        if reused:  # as it was built, whatever this run's limit says
            codes_only = not S.read_manifest(version)["index"]["fp16_objects"]
        else:
            shutil.rmtree(version, ignore_errors=True)
            options = (B.IndexOptions(fp16_objects=False, objects_lists=args.codes_only_lists) if codes_only
                       else B.IndexOptions())
            t0 = time.perf_counter()
            B.build_version(version, grown, video_encoder=STAMP, objects_dims=dims[0], events_dims=dims[1],
                            index=True, params=S.SearchParams(exact_below=1), options=options, progress=not args.smoke)
            build_s = time.perf_counter() - t0
        similarity_graph(dims[0], dims[1], phrases.shape[1], version / "similarity.onnx")
        probe_out = median_probe([run_probe(version, dims, phrases, sentence, SWEEP if not args.smoke else SWEEP[-2:],
                                            args.threads, work) for _ in range(args.repeats)])
        exact = exact_top(version, dims, phrases, sentence) if size <= args.exact_limit and not codes_only else None
        disk = disk_bytes(version)
        without = disk if codes_only else (disk - (version / "seg-000001" / "gallery.safetensors").stat().st_size
                                           + size * np.prod(dims[1]) * 2)  # the store's events stay
        for setting in probe_out["settings"]:
            row = {"setting": name, "videos": size, "fp16_objects": not codes_only, "nprobe": setting["nprobe"],
                   "candidates": setting["candidates"],
                   "recall@1": recall(exact, setting["rows"], 1) if exact is not None else None,
                   "recall@10": recall(exact, setting["rows"], 10) if exact is not None else None,
                   "p50_ms": setting["p50_ms"], "p99_ms": setting["p99_ms"], "batch32_qps": setting["batch32_qps"],
                   "p50_runs_ms": setting["p50_runs_ms"],
                   "peak_rss_gib": probe_out["peak_rss_gib"], "rss_anon_gib": probe_out["rss_anon_gib"],
                   "disk_bytes_per_video": disk / size, "disk_bytes_per_video_without_fp16_objects": without / size,
                   "build_s": build_s, "load_s": probe_out["load_s"]}
            if truth_ids is not None:
                ids = grown.video_ids
                row["t2v_r1_two_stage"] = float(np.mean([ids[r[0]] == t for r, t in zip(setting["rows"], truth_ids)]))
                if exact is not None:
                    row["t2v_r1_exact"] = float(np.mean([ids[e[0]] == t for e, t in zip(exact, truth_ids)]))
            rows_out.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        if not (args.keep or reused):
            shutil.rmtree(version)
        report(rows_out, args.out, args.note)


def report(rows: list[dict], out: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [note, "", "| setting | videos | nprobe / candidates | recall@1 | recall@10 | p50 ms | p99 ms | "
             "q/s (batch 32) | peak RSS GiB (anon) | disk B/video | build s | load s |", "|" + "---|" * 12]
    for r in rows:
        store = "" if r.get("fp16_objects", True) else " (codes only)"
        lines.append(f"| {r['setting']} | {r['videos']:,}{store} | {r['nprobe']} / {r['candidates']} | "
                     f"{fmt(r['recall@1'], '.3f')} | "
                     f"{fmt(r['recall@10'], '.3f')} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{fmt(r['batch32_qps'], '.1f')} | {r['peak_rss_gib']:.2f} ({r['rss_anon_gib']:.2f}) | "
                     f"{r['disk_bytes_per_video']:,.0f} | "
                     f"{fmt(r['build_s'], '.0f')} | {r['load_s']:.1f} |")
    r1 = [r for r in rows if "t2v_r1_two_stage" in r]
    if r1:
        lines += ["", "Ground-truth t2v R@1 of the test captions (their videos are in every gallery):", ""]
        for r in r1:
            lines.append(f"- {r['videos']:,} videos, nprobe {r['nprobe']} / candidates {r['candidates']}: exact "
                         f"{fmt(r.get('t2v_r1_exact'), '.3f')}, two-stage {r['t2v_r1_two_stage']:.3f}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["setting"], r["videos"]) for r in rows if r["recall@10"] is not None}):
        pts = [(r["p50_ms"], r["recall@10"]) for r in rows if (r["setting"], r["videos"]) == key]
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} {key[1]:,}")
    ax.set_xlabel("p50 latency per single query (ms)")
    ax.set_ylabel("recall@10 against exact S")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_latency.png", dpi=120)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("scale"))
    parser.add_argument("--workdir", type=Path, help="where versions are built (default: a temporary folder)")
    parser.add_argument("--export", type=Path, help="export of the trained tiny model (tiny setting)")
    parser.add_argument("--data", type=Path, help="dataset whose test captions are the queries (tiny setting)")
    parser.add_argument("--pool", type=Path, help="prototypes file of real encoded videos to grow from (tiny)")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--settings", default="tiny,vit-b-32")
    parser.add_argument("--vitb-sizes", help="sizes of the vit-b-32 setting (default: --sizes)")
    parser.add_argument("--exact-limit", type=int, default=100_000, help="largest gallery with exact ground truth "
                        "for vit-b-32 (tiny: every size); larger ones are built without the fp16 store, as the "
                        "issue's 1M target asks (it would be 147 GB)")
    parser.add_argument("--codes-only-lists", type=int, default=0, help="IVF lists of the objects index of versions "
                        "built without the fp16 store (0: the build's default, a power of two near sqrt(vectors))")
    parser.add_argument("--queries", type=int, default=200,
                        help="queries: random for vit-b-32, evenly spaced test captions for tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the built versions")
    parser.add_argument("--reuse", action="store_true", help="probe the versions an earlier --keep run left in "
                        "--workdir instead of building them again (their build time is then not measured)")
    parser.add_argument("--repeats", type=int, default=1, help="probe runs per version; latencies are their medians "
                        "(one run of a latency moves by up to a third on a shared machine)")
    parser.add_argument("--smoke", action="store_true", help="both settings at a few hundred videos (the test suite)")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    for hidden in ("--dims", "--sweep", "--result", "--queries-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.probe:
        probe(args)
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prost-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    settings = args.settings.split(",")
    if args.smoke:
        sizes, args.queries = [300], 40
    args.note = (f"bench/scale.py on {os.cpu_count()} cores, {args.threads} search threads, "
                 f"{'smoke run' if args.smoke else 'full run'}; vit-b-32 is random unit vectors, tiny is prototypes of "
                 f"encoded synthetic videos grown with derived distractors")
    if "tiny" in settings:
        if args.smoke:
            export_dir, data, pool = smoke_inputs(work)
        else:
            export_dir, data, pool = args.export, args.data, B.read_prototypes(args.pool)
        test, phrases, sentence = encode_split(export_dir, data, "test")
        step = max(1, len(phrases) // args.queries)  # evenly spaced test captions
        phrases, sentence, truth = phrases[::step], sentence[::step], test.video_ids[::step]
        combined = merged_pool(test, pool)
        alone = len(test.video_ids)  # the test videos alone: ground truth without distractors
        run_setting("tiny", combined, (phrases, sentence), [alone, *sizes], argparse.Namespace(
            **{**vars(args), "exact_limit": max(sizes)}), work, rows, truth)
    if "vit-b-32" in settings:
        vitb = [int(s) for s in args.vitb_sizes.split(",")] if args.vitb_sizes and not args.smoke else sizes
        run_setting("vit-b-32", None, random_queries(args.queries, args.seed), vitb, args, work, rows)
    print((args.out / "report.md").read_text())
    return 0


def merged_pool(test: B.ArrayPrototypes, pool) -> B.ArrayPrototypes:
    """The test split's prototypes followed by the pool's (ids prefixed, so the two datasets never collide)."""
    return B.ArrayPrototypes(list(test.video_ids) + [f"pool-{v}" for v in pool.video_ids],
                             np.concatenate([np.asarray(a, np.float32) for a in (test.objects, pool.objects)]),
                             np.concatenate([np.asarray(a, np.float32) for a in (test.events, pool.events)]))


def encode_split(export_dir: Path, data: Path, split: str) -> tuple[B.ArrayPrototypes, np.ndarray, np.ndarray]:
    """A split's video prototypes and the text prototypes of each video's first caption, through the export's
    graphs, decoded and tokenized as the export's ranking gate does (`prost_export.parity.dataset_inputs`)."""
    from prost.config import ProstConfig
    from prost.data.datasets import load_split
    from prost_export.manifest import read_manifest
    from prost_export.parity import dataset_inputs, onnx_backend

    config = ProstConfig.from_dict(read_manifest(export_dir)["config"])
    ids = [item.video_id for item in load_split(data, split)]
    frames, tokens = dataset_inputs(config, data, split, max_videos=len(ids))
    run = onnx_backend(export_dir, config)
    videos = [run("video_prototypes", {"FRAMES": frames[i:i + 32]}) for i in range(0, len(frames), 32)]
    text = run("text_prototypes", {"TOKEN_IDS": tokens})
    prototypes = B.ArrayPrototypes(ids, np.concatenate([v["OBJECT_PROTOTYPES"] for v in videos]),
                                   np.concatenate([v["EVENT_PROTOTYPES"] for v in videos]))
    return prototypes, text["PHRASE_PROTOTYPES"], text["SENTENCE_EMBEDDING"]


def smoke_inputs(work: Path):
    """A random-weight tiny export, a 40-video synthetic dataset and its prototypes as the pool (smoke run)."""
    import prost
    from prost.data.synthetic import generate
    from prost_export.onnx import export_onnx

    export_dir = export_onnx(prost.create_model("tiny", seed=0).eval(), work / "export")
    data = generate(work / "data", videos=40, seed=0, workers=1)
    return export_dir, data, encode_split(export_dir, data, "train")[0]


if __name__ == "__main__":
    sys.exit(main())
