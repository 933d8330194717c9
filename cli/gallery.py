"""`prost gallery encode | build | search`: gallery versions built and searched in process, by the engine that serves
them (`prost.gallery`), so large galleries are built without a server and searches match the served ones."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from prost.config import ProstConfig
from prost.errors import GalleryError, PathError
from prost.fileio import check_writable
from prost.gallery import build as B
from prost.gallery.engine import GalleryEngine, make_scorer, similarity_session, with_overrides
from prost.gallery.store import SearchParams, load_version
from prost.model.similarity import DEFAULT_BLOCK_ELEMENTS
from prost_client import gallery_format as G, protocol as P
from prost_export.manifest import checkpoint_sha256, read_manifest
from prost_export.parity import onnx_session
from prost_export.specs import graph_specs
from prost_model_repository import storage
from prost_model_repository.graph_rewrite import with_float16_inputs

OVERRIDABLE = [f.name for f in fields(SearchParams) if f.name != "exact_below"]  # `search` flags of one query


def register_cli(sub: argparse._SubParsersAction) -> None:
    """`prost gallery` and its actions."""
    parser = sub.add_parser("gallery", help="build and search gallery versions in process (large galleries)")
    verbs = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    encode = verbs.add_parser("encode", help="write the video prototypes of a dataset (input of `gallery build`)")
    encode.add_argument("--checkpoint", required=True, help="run directory or checkpoint")
    encode.add_argument("--data", required=True, help="dataset root")
    encode.add_argument("--split", default="test", help="split(s) to encode, comma-separated (default: test)")
    encode.add_argument("--out", required=True, type=Path, help="prototypes file to write (.safetensors)")
    encode.add_argument("--batch-size", type=int, default=32, help="videos per encoder batch")
    encode.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    encode.set_defaults(func=_encode)

    build = verbs.add_parser("build", help="write a gallery version (exact, or two-stage with a FAISS index)")
    build.add_argument("--prototypes", type=Path, help="prototypes file (`gallery encode`) to add")
    build.add_argument("--export", required=True, type=Path,
                       help="export directory: the video encoder stamp and the similarity graph")
    target = build.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="new version directory to write")
    target.add_argument("--repository", type=Path,
                        help="model repository: write the next prost_gallery version (under its lock)")
    build.add_argument("--incremental", action="store_true",
                       help="start from the latest version: keep (hard-link) its segments, add --prototypes, "
                            "drop --remove; needs --repository or --base")
    build.add_argument("--base", type=Path, help="version directory --incremental starts from (with --out)")
    build.add_argument("--remove", type=Path, help="with --incremental: a text file of video ids to remove, one a line")
    build.add_argument("--index", choices=("auto", "yes", "no"), default="auto",
                       help="train a two-stage index (auto: when the gallery has at least --exact-below videos)")
    for f in fields(SearchParams):
        build.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default,
                           help="search parameter stored with the version (README: Large galleries)")
    build.add_argument("--objects-lists", type=int, default=0, help="coarse centroids of object vectors (0: about "
                       "the square root of the object vectors, a power of two)")
    build.add_argument("--pq-bytes", type=int, default=0, help="PQ bytes per object vector (0: D / 8)")
    build.add_argument("--train-videos", type=int, default=B.IndexOptions.train_videos,
                       help="videos sampled to train the quantisers")
    build.add_argument("--seed", type=int, default=0, help="seed of the training sample and k-means")
    build.add_argument("--no-fp16-store", action="store_true",
                       help="keep only the compressed objects (the final stage then scores decoded codes)")
    build.add_argument("--objects-dtype", choices=tuple(G.OBJECT_DTYPES), default="fp16",
                       help="store the object prototypes in bf16: searched by a bf16 GEMM where torch and the CPU "
                            f"run one; refused below recall@{B.GATE_TOP_K} {B.BF16_GATE} against fp32 (README)")
    build.add_argument("--chunk", type=int, default=B.DEFAULT_CHUNK, help="videos per streamed chunk")
    build.set_defaults(func=_build)

    search = verbs.add_parser("search", help="top-k videos for texts, in process, through the serving engine")
    search.add_argument("texts", nargs="+", help="queries")
    search.add_argument("--gallery", required=True, type=Path,
                        help="gallery version directory (e.g. REPO/prost_gallery/3), or a repository (its latest)")
    search.add_argument("--export", required=True, type=Path, help="export directory (the text encoder)")
    search.add_argument("--top-k", type=int, default=int(P.DEFAULT_TOP_K), help="results per text")
    search.add_argument("--mode", choices=("auto", "exact", "two-stage"), default="auto",
                        help="auto: the version's choice by size")
    for name in OVERRIDABLE:
        search.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"override the version's {name}")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(func=_search)


def _encode(args: argparse.Namespace) -> int:
    from prost.checkpoint import load_model
    from prost.data.datasets import load_split
    from prost.evaluate import encode_gallery

    check_writable(args.out, folder=False)
    model = load_model(args.checkpoint)
    items = [item for split in args.split.split(",") for item in load_split(args.data, split.strip())]
    ids, video = encode_gallery(model, items, batch_size=args.batch_size, workers=args.workers)
    prototypes = B.ArrayPrototypes(ids, video.objects.numpy(), video.events.numpy())
    B.write_prototypes(args.out, prototypes, checkpoint=checkpoint_sha256(Path(args.checkpoint)))
    print(f"wrote {len(ids)} videos' prototypes to {args.out}")
    return 0


def _export_facts(export_dir: Path) -> tuple[dict, ProstConfig, str]:
    manifest = read_manifest(export_dir)
    config = ProstConfig.from_dict(manifest["config"])
    video = graph_specs(config)["video_prototypes"].onnx_file
    return manifest, config, manifest["files"][video]["sha256"]


def _dims(config: ProstConfig) -> tuple[list[int], list[int]]:
    h = config.head
    return [h.num_frames, h.num_objects, config.embed_dim], [h.num_events, config.embed_dim]


def _build(args: argparse.Namespace) -> int:
    manifest, config, encoder = _export_facts(args.export)
    objects_dims, events_dims = _dims(config)
    prototypes = B.read_prototypes(args.prototypes) if args.prototypes else None
    recorded = (manifest.get("checkpoint") or {}).get("sha256")
    if prototypes is not None and prototypes.checkpoint and recorded and prototypes.checkpoint != recorded:
        raise GalleryError(f"{args.prototypes} was encoded by checkpoint {prototypes.checkpoint[:12]}, {args.export} "
                           f"exports {recorded[:12]}: encode the videos with the exported checkpoint")
    full_only = [flag for flag, value in _full_build_flags(args).items() if value]
    if args.incremental and full_only:
        raise GalleryError(f"{', '.join(full_only)} apply to full builds; an incremental version keeps its base's "
                           f"index and search parameters")
    try:
        removed = G.read_id_list(args.remove) if args.remove else []
    except ValueError as exc:
        raise PathError(str(exc)) from None
    if removed and not args.incremental:
        raise GalleryError("--remove needs --incremental (a full build writes only --prototypes)")
    if prototypes is None and not args.incremental:
        raise GalleryError("a full build needs --prototypes")
    params = SearchParams(**{f.name: getattr(args, f.name) for f in fields(SearchParams)})
    options = B.IndexOptions(objects_lists=args.objects_lists, pq_bytes=args.pq_bytes,
                             train_videos=args.train_videos, fp16_objects=not args.no_fp16_store, seed=args.seed)
    index = {"auto": None, "yes": True, "no": False}[args.index]
    graph = with_float16_inputs(args.export / graph_specs(config)["similarity"].onnx_file,
                                (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES))
    started = time.monotonic()

    def write(out: Path, base: Path | None) -> None:
        if args.incremental:
            if base is None:
                raise GalleryError("--incremental needs --base VERSION_DIR (with --out) or --repository")
            B.update_version(out, base, add=prototypes, remove=removed, video_encoder=encoder,
                             objects_dims=objects_dims, events_dims=events_dims, chunk=args.chunk)
        else:
            B.build_version(out, prototypes, video_encoder=encoder, objects_dims=objects_dims,
                            events_dims=events_dims, params=params, options=options, index=index,
                            objects_dtype=args.objects_dtype, chunk=args.chunk)
        (out / G.MODEL_FILE).write_text(G.MODEL_SOURCE)
        (out / G.SIMILARITY_FILE).write_bytes(graph)

    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            raise PathError(f"{args.out} exists and is not empty; pick a new version directory")
        write(args.out, args.base)
        where = args.out
    else:
        where = _build_into_repository(args.repository, args.base, args.incremental, write)
        print("a running server serves it once it loads prost_gallery again (`prost-client reload`)")
    print(f"wrote {where} in {time.monotonic() - started:.1f} s")
    return 0


def _build_into_repository(repository: Path, base: Path | None, incremental: bool, write) -> Path:
    """Build the next prost_gallery version in a staging folder of the model (no lock: a build can take hours), then
    take the model's lock only to number it, rename it into place and list it in the manifest. An incremental build
    whose base stopped being the latest meanwhile is refused (another writer's version would be lost)."""
    model_dir = repository / P.GALLERY_MODEL
    if not model_dir.is_dir():
        raise PathError(f"{repository} is not a model repository (no {P.GALLERY_MODEL}); build it with "
                        f"`prost repository build`")
    existing = G.versions(model_dir)
    if incremental and base is None and not existing:
        raise GalleryError(f"{model_dir} has no version to start from; run a full `prost gallery build` first")
    latest = model_dir / str(existing[-1]) if existing else None
    staging = storage.new_staging(model_dir)
    try:
        write(staging, base or latest)
        with storage.DirectoryLock(model_dir):
            now = G.versions(model_dir)
            if incremental and base is None and now[-1:] != existing[-1:]:
                raise GalleryError(f"{model_dir} got version {now[-1]} while this build started from {latest}; run "
                                   f"the incremental build again")
            version = storage.commit_gallery(repository, P.GALLERY_MODEL, staging, 1)
    finally:
        storage.discard_staging(staging)
    return model_dir / str(version)


def _full_build_flags(args: argparse.Namespace) -> dict[str, bool]:
    """{flag: given} for the flags only a full build uses (index, quantisers, search parameters)."""
    defaults = {**{f.name: f.default for f in fields(SearchParams)},
                **{f.name: f.default for f in fields(B.IndexOptions) if f.name != "fp16_objects"},
                "no_fp16_store": False, "index": "auto", "objects_dtype": "fp16"}
    return {f"--{name.replace('_', '-')}": getattr(args, name) != default for name, default in defaults.items()}


def open_engine(gallery: Path, export_dir: Path) -> tuple[GalleryEngine, ProstConfig]:
    """The engine over a version directory (or a repository's latest gallery version), scoring with that version's
    similarity graph, for the export's model."""
    gallery = Path(gallery)
    if (gallery / P.GALLERY_MODEL).is_dir():
        existing = G.versions(gallery / P.GALLERY_MODEL)
        if not existing:
            raise PathError(f"{gallery / P.GALLERY_MODEL} has no version")
        gallery = gallery / P.GALLERY_MODEL / str(existing[-1])
    _, config, encoder = _export_facts(export_dir)
    objects_dims, events_dims = _dims(config)
    version = load_version(gallery, objects_dims, events_dims, encoder)
    scorer, _ = make_scorer(version.objects_dtype, similarity_session(gallery / G.SIMILARITY_FILE), config.beta,
                            DEFAULT_BLOCK_ELEMENTS)
    return GalleryEngine(version, scorer, config.beta, DEFAULT_BLOCK_ELEMENTS), config


def _search(args: argparse.Namespace) -> int:
    from prost.tokenizer import tokenize

    engine, config = open_engine(args.gallery, args.export)
    text = onnx_session(args.export / graph_specs(config)["text_prototypes"].onnx_file)
    phrases, sentence = text.run([P.PHRASE_PROTOTYPES, P.SENTENCE_EMBEDDING],
                                 {P.TOKEN_IDS: tokenize(args.texts, config.max_words).astype(np.int32)})
    mode = None if args.mode == "auto" else args.mode
    params = with_overrides(engine.version.params, **{name: getattr(args, name) for name in OVERRIDABLE})
    started = time.perf_counter()
    found = engine.search(phrases, sentence, args.top_k, params=params, mode=mode)
    elapsed = time.perf_counter() - started
    results = [[{"video_id": engine.ids[r], "score": float(s), "matched_frames": f.tolist()}
                for r, s, f in zip(rows, scores, frames)]
               for rows, scores, frames in zip(found.rows, found.scores, found.frames)]
    if args.json:
        print(json.dumps({"mode": mode or engine.mode, "seconds": elapsed,
                          "results": dict(zip(args.texts, results))}, indent=1))
    else:
        for query, hits in zip(args.texts, results):
            print(query)
            for rank, hit in enumerate(hits, 1):
                print(f"  {rank:>3}  {hit['score']:.4f}  {hit['video_id']}")
        print(f"{mode or engine.mode} search of {engine.size} videos in {elapsed * 1000:.1f} ms")
    return 0
