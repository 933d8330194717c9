"""Writing gallery versions (`prost gallery build`): streamed in chunks, so memory is bounded by the chunk and the
quantiser training sample, never by the gallery; incremental versions hard-link the segments they keep.

The two-stage index is trained once, on a sample (`train_videos`): an IVF-PQ codec for object vectors (coarse
centroids + PQ residual codes, ColBERTv2's compression; codes are stored per video, and each coarse centroid lists
the videos with an object in it) and a fast-scan PQ index of event vectors (4-bit codes of 2 dimensions each,
scanned exhaustively: no clusters it could miss the best events by). Segments added later are encoded with the
same trained quantisers.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from prost.errors import GalleryError
from prost.fileio import fsync_path, link_or_copy, sha256_file
from prost.gallery import store as S
from prost_client import gallery_format as G

IDS_KEY = "video_ids"  # prototypes-file metadata: JSON list of the ids, row order
CHECKPOINT_KEY = "checkpoint_sha256"  # prototypes-file metadata: the checkpoint that encoded them
DEFAULT_CHUNK = 4096  # videos per streamed chunk
# A bf16 object store must keep recall@10 >= BF16_GATE against fp32 on GATE_QUERIES queries over GATE_VIDEOS videos.
BF16_GATE, GATE_QUERIES, GATE_VIDEOS, GATE_TOP_K = 0.99, 64, 2000, 10
# Fewest vectors the quantisers train on: 256 PQ centroids of object vectors; 16 for the events' 4-bit codes.
MIN_OBJECT_VECTORS, MIN_EVENT_VECTORS = 256, 16


class Prototypes(Protocol):
    """Video prototypes to store: ids, objects [N, L, No, D] and events [N, Ne, D]; slicing a range of rows returns
    an array (numpy arrays and memory maps qualify)."""

    video_ids: Sequence[str]
    objects: Any
    events: Any


@dataclass
class ArrayPrototypes:
    """Prototypes held in arrays or memory maps."""

    video_ids: Sequence[str]
    objects: Any
    events: Any
    checkpoint: str | None = None


@dataclass(frozen=True)
class IndexOptions:
    """How the two-stage index is trained; 0 picks the default from the gallery's size and dims."""

    objects_lists: int = 0  # IVF lists of object vectors (default: a power of two near sqrt(vectors))
    pq_bytes: int = 0  # PQ bytes per object vector (default D / 8: 16 at D 128, 64 at D 512)
    train_videos: int = 20_000  # videos sampled to train the quantisers
    fp16_objects: bool = True  # keep the fp16 object store (the final stage's exact scores)
    seed: int = 0


def read_prototypes(path: Path) -> ArrayPrototypes:
    """A prototypes file written by `prost gallery encode`, memory-mapped."""
    arrays, metadata = S.safetensors_arrays(Path(path))
    try:
        ids = json.loads(metadata[IDS_KEY])
    except (KeyError, ValueError):
        raise GalleryError(f"{path} is not a prototypes file: its metadata has no {IDS_KEY!r} list; write it with "
                           f"`prost gallery encode`") from None
    if "objects" not in arrays or "events" not in arrays:
        raise GalleryError(f"{path} must hold 'objects' and 'events'; has {sorted(arrays)}")
    check_prototypes(ids, arrays["objects"], arrays["events"], source=str(path))
    return ArrayPrototypes(ids, arrays["objects"], arrays["events"], metadata.get(CHECKPOINT_KEY))


def check_prototypes(ids: Sequence[str], objects, events, *, source: str) -> None:
    """Ids unique strings, one row of objects [N, L, No, D] and events [N, Ne, D] each."""
    if len(set(ids)) != len(ids) or not all(isinstance(v, str) for v in ids):
        raise GalleryError(f"{source}: video ids must be unique strings")
    if len(objects.shape) != 4 or len(events.shape) != 3 or not len(ids) == objects.shape[0] == events.shape[0]:
        raise GalleryError(f"{source}: expected objects [N, L, No, D] and events [N, Ne, D] for N={len(ids)} ids, "
                           f"got {list(objects.shape)} and {list(events.shape)}")


def write_prototypes(path: Path, prototypes: Prototypes, *, checkpoint: str | None = None,
                     chunk: int = DEFAULT_CHUNK) -> None:
    """Write prototypes (fp16) as a prototypes file, streamed in chunks."""
    n = len(prototypes.video_ids)
    metadata = {IDS_KEY: json.dumps(list(prototypes.video_ids)), **({CHECKPOINT_KEY: checkpoint} if checkpoint else {})}
    stream = S.TensorStream(path, {"objects": (np.float16, tuple(prototypes.objects.shape)),
                                   "events": (np.float16, tuple(prototypes.events.shape))}, metadata)
    for name in ("objects", "events"):
        for v0 in range(0, n, chunk):
            stream.write(name, np.asarray(getattr(prototypes, name)[v0:v0 + chunk]))
    stream.close()


def _lists(vectors: int, train_vectors: int) -> int:
    """A power of two near sqrt(vectors), at most one list per 39 training vectors (FAISS's minimum per centroid)."""
    target = 2 ** round(math.log2(max(1.0, math.sqrt(vectors))))
    return int(max(1, min(target, 65536, 2 ** int(math.log2(max(1, train_vectors // 39))))))


def train_index(prototypes: Prototypes, options: IndexOptions, progress: bool = True) -> tuple[Any, Any, dict]:
    """Trained, empty objects (IVF-PQ) and events (fast-scan PQ) indexes from a sample of the prototypes, and their
    description for gallery.json."""
    faiss = S.faiss_module()
    n = len(prototypes.video_ids)
    _, n_l, n_o, d = prototypes.objects.shape
    n_e = prototypes.events.shape[1]
    rows = np.sort(np.random.default_rng(options.seed).choice(n, min(n, options.train_videos), replace=False))
    objects = _float32(prototypes.objects, rows).reshape(-1, d)
    events = _float32(prototypes.events, rows).reshape(-1, d)
    if len(objects) < MIN_OBJECT_VECTORS or len(events) < MIN_EVENT_VECTORS:
        raise GalleryError(f"{n} videos hold {len(objects)} object and {len(events)} event vectors, too few to train "
                           f"an index ({MIN_OBJECT_VECTORS} and {MIN_EVENT_VECTORS} at least); build this gallery "
                           f"without one (exact search)")
    pq = options.pq_bytes or max(1, d // 8)
    if d % pq:
        raise GalleryError(f"--pq-bytes {pq} must divide the prototype dimension {d}")
    if d % 2:
        raise GalleryError(f"the events index codes 2 dimensions per 4-bit code; the prototype dimension {d} is odd")
    objects_lists = options.objects_lists or _lists(n * n_l * n_o, len(objects))
    description = {"objects_factory": f"IVF{objects_lists},PQ{pq}", "events_factory": f"PQ{d // 2}x4fs",
                   "train_videos": len(rows), "fp16_objects": options.fp16_objects, "seed": options.seed}
    trained = []
    for factory, sample in ((description["objects_factory"], objects), (description["events_factory"], events)):
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        clustering = None
        if factory.startswith("IVF"):
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.cp.seed = options.seed
            ivf.do_polysemous_training = False  # on by default; we never search by Hamming (20x the train time)
            clustering = S.on_gpus(faiss.IndexFlatIP(d))  # k-means assignment on the GPUs where faiss sees any
            if clustering is not None:
                ivf.clustering_index = clustering
        else:
            index.pq.cp.seed = options.seed
        if progress:
            print(f"training {factory} on {len(sample):,} vectors{' (k-means on GPU)' if clustering else ''}",
                  flush=True)
        index.train(sample)
        if clustering is not None:
            ivf.clustering_index = None  # a borrowed pointer: not kept past `clustering`
        trained.append(index)
    return trained[0], trained[1], description


def bf16_recall(prototypes: Prototypes) -> float:
    """Recall@10 of bf16 objects (and a bf16 GEMM, as the engine scores them) against fp32, over the first
    GATE_VIDEOS videos. The queries are GATE_QUERIES of those videos, evenly spaced: each one's first-frame objects
    as phrases and first event as sentence, beta 1 (a build has no captions)."""
    import torch

    from prost.model.prost import TextPrototypes, VideoPrototypes
    from prost.model.similarity import similarity

    n = min(len(prototypes.video_ids), GATE_VIDEOS)
    objects = torch.from_numpy(np.asarray(prototypes.objects[:n], np.float32))
    events = torch.from_numpy(np.asarray(prototypes.events[:n], np.float16).astype(np.float32))  # as stored
    queries = np.linspace(0, n - 1, min(n, GATE_QUERIES)).astype(int)
    text = TextPrototypes(objects[queries, 0], events[queries, 0])
    k = min(GATE_TOP_K, n)
    exact = similarity(text, VideoPrototypes(objects, events)).total.topk(k, dim=1).indices
    stored = VideoPrototypes(objects.bfloat16(), events)
    reduced = similarity(text, stored, compute="bf16").total.topk(k, dim=1).indices
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, reduced)]))


def _float32(array, rows: np.ndarray) -> np.ndarray:
    """array[rows] as float32, read in sorted runs (memory maps read sequentially)."""
    return np.concatenate([np.asarray(array[rows[i:i + DEFAULT_CHUNK]], np.float32)
                           for i in range(0, len(rows), DEFAULT_CHUNK)]) if len(rows) else np.zeros((0,), np.float32)


def write_segment(directory: Path, prototypes: Prototypes, *, video_encoder: str, codec: S.Codec | None = None,
                  events_trained: Any = None, fp16_objects: bool = True, objects_dtype: str = "fp16",
                  chunk: int = DEFAULT_CHUNK, progress: bool = True) -> dict:
    """Write one segment (ids, fp16 store, and with a codec its object codes, postings and events index), streamed
    chunk by chunk; returns its gallery.json entry. `objects_dtype` ("fp16" or "bf16") is the store's for objects."""
    directory.mkdir(parents=True)
    ids = list(prototypes.video_ids)
    n = len(ids)
    uid = secrets.token_hex(8)
    (directory / G.IDS_FILE).write_text(json.dumps({"video_ids": ids}, ensure_ascii=False) + "\n")
    fsync_path(directory / G.IDS_FILE)
    objects_shape, events_shape = tuple(prototypes.objects.shape), tuple(prototypes.events.shape)
    store_dtype = G.OBJECT_DTYPES[objects_dtype]
    shapes = {**({"objects": (store_dtype, objects_shape)} if fp16_objects else {}),
              "events": (np.float16, events_shape)}
    tensors = S.TensorStream(directory / G.TENSORS_FILE, shapes,
                             {"format": "prost-gallery", "videos": str(n), G.ENCODER_STAMP: video_encoder,
                              S.SEGMENT_KEY: uid})
    files = [G.IDS_FILE, G.TENSORS_FILE]
    entry = {"dir": directory.name, "uid": uid, "videos": n, "removed": []}
    slots = objects_shape[1] * objects_shape[2]
    if codec is not None:
        events_index = S.faiss_module().clone_index(events_trained)
        codes = S.TensorStream(directory / S.CODES_FILE, {"codes": (np.uint8, (n, slots, codec.code_size))},
                               {S.CODEC_KEY: codec.sha256, S.SEGMENT_KEY: uid})
        pairs = []  # unique (centroid * n + row) of each chunk: the postings
        files += [S.CODES_FILE, S.POSTINGS_FILE, S.EVENTS_INDEX]
    bar = tqdm(total=n, unit="video", desc=f"segment {directory.name}", disable=not progress)
    for v0 in range(0, n, chunk):  # objects: fp16 store, codes
        block = np.asarray(prototypes.objects[v0:v0 + chunk])
        if fp16_objects:
            tensors.write("objects", block.astype(store_dtype))
        if codec is not None:
            encoded = codec.encode(block.reshape(-1, objects_shape[-1])).reshape(len(block), slots, -1)
            codes.write("codes", encoded)
            rows = np.arange(v0, v0 + len(block), dtype=np.int64)[:, None]
            pairs.append(np.unique(codec.coarse(encoded) * n + rows))
        bar.update(len(block))
    bar.close()
    for v0 in range(0, n, chunk):  # events: fp16 store, events index (sequential ids: row * Ne + k)
        block = np.asarray(prototypes.events[v0:v0 + chunk])
        tensors.write("events", block.astype(np.float16))
        if codec is not None:
            events_index.add(block.astype(np.float32).reshape(-1, events_shape[-1]))
    tensors.close()
    if codec is not None:
        codes.close()
        _write_postings(directory / S.POSTINGS_FILE, pairs, n, len(codec.centroids),
                        {S.CODEC_KEY: codec.sha256, S.SEGMENT_KEY: uid})
        S.faiss_module().write_index(events_index, str(directory / S.EVENTS_INDEX))
        fsync_path(directory / S.EVENTS_INDEX)
        entry["events_sha256"] = sha256_file(directory / S.EVENTS_INDEX)
    return {**entry, "files": S.file_sizes(directory, files)}


def _write_postings(path: Path, pairs: list[np.ndarray], n: int, lists: int, metadata: dict[str, str]) -> None:
    """postings.safetensors from the unique (centroid * n + row) keys of every chunk: rows grouped by centroid."""
    keys = np.sort(np.concatenate(pairs)) if pairs else np.zeros(0, np.int64)
    offsets = np.searchsorted(keys // max(n, 1), np.arange(lists + 1)).astype(np.int64)
    rows = (keys % max(n, 1)).astype(np.int32)
    stream = S.TensorStream(path, {"offsets": (np.int64, offsets.shape), "rows": (np.int32, rows.shape)}, metadata)
    stream.write("offsets", offsets)
    stream.write("rows", rows)
    stream.close()


def build_version(out: Path, prototypes: Prototypes, *, video_encoder: str, objects_dims: Sequence[int],
                  events_dims: Sequence[int], params: S.SearchParams = S.SearchParams(),
                  options: IndexOptions = IndexOptions(), index: bool | None = None, objects_dtype: str = "fp16",
                  gate: bool = True, chunk: int = DEFAULT_CHUNK, progress: bool = True) -> dict:
    """Write a complete gallery version's data into the empty or new directory `out`; returns its gallery.json.
    `index` None trains a two-stage index when the gallery has at least `params.exact_below` videos and vectors
    enough to train one; `objects_dtype` "bf16" stores the object prototypes in bfloat16 (scored by a bf16 GEMM
    where torch and the CPU run one), after `bf16_recall` passes BF16_GATE unless `gate` is False (benchmarks of
    random vectors)."""
    if objects_dtype not in G.OBJECT_DTYPES:
        raise GalleryError(f"objects dtype must be one of {', '.join(G.OBJECT_DTYPES)}, got {objects_dtype!r}")
    check_prototypes(prototypes.video_ids, prototypes.objects, prototypes.events, source="prototypes")
    _check_dims(prototypes, objects_dims, events_dims)
    if index is None:
        n = len(prototypes.video_ids)
        trainable = (n * math.prod(prototypes.objects.shape[1:3]) >= MIN_OBJECT_VECTORS
                     and n * prototypes.events.shape[1] >= MIN_EVENT_VECTORS)
        index = n >= params.exact_below and trainable
    if objects_dtype == "bf16" and index and not options.fp16_objects:
        raise GalleryError("--objects-dtype bf16 sets the dtype of the object store, which --no-fp16-store leaves out")
    if objects_dtype == "bf16" and gate:
        recall = bf16_recall(prototypes)
        if recall < BF16_GATE:
            raise GalleryError(f"a bf16 object store keeps recall@{GATE_TOP_K} {recall:.3f} against fp32 on these "
                               f"prototypes, below the gate {BF16_GATE}: build with --objects-dtype fp16")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec, events_trained, description = None, None, None
    if index:
        objects_index, events_trained, description = train_index(prototypes, options, progress)
        _write_trained(out, objects_index, events_trained, description)
        codec = S.Codec(objects_index, sha256_file(out / S.TRAINED_OBJECTS))
    segment = write_segment(out / segment_name(1), prototypes, video_encoder=video_encoder, codec=codec,
                            events_trained=events_trained, fp16_objects=options.fp16_objects or not index,
                            objects_dtype=objects_dtype, chunk=chunk, progress=progress)
    manifest = {"format": S.FORMAT, "video_encoder_sha256": video_encoder, "objects": list(objects_dims),
                "objects_dtype": objects_dtype, "events": list(events_dims), "segments": [segment],
                "index": description,
                "search": asdict(params)}
    S.write_manifest(out, manifest)
    return manifest


def _write_trained(out: Path, objects_index: Any, events_index: Any, description: dict) -> None:
    faiss = S.faiss_module()
    (out / "index").mkdir(exist_ok=True)
    for index, name in ((objects_index, S.TRAINED_OBJECTS), (events_index, S.TRAINED_EVENTS)):
        faiss.write_index(index, str(out / name))
        fsync_path(out / name)
    description["files"] = S.file_sizes(out, [S.TRAINED_OBJECTS, S.TRAINED_EVENTS])


def _check_dims(prototypes: Prototypes, objects_dims: Sequence[int], events_dims: Sequence[int]) -> None:
    got = [list(prototypes.objects.shape[1:]), list(prototypes.events.shape[1:])]
    if got != [list(objects_dims), list(events_dims)]:
        raise GalleryError(f"prototypes have objects {got[0]} and events {got[1]}, the similarity graph takes "
                           f"{list(objects_dims)} and {list(events_dims)}: they come from another model")


def segment_name(number: int) -> str:
    """The folder of segment `number` in a version."""
    return f"seg-{number:06d}"


def update_version(out: Path, base: Path, *, add: Prototypes | None, remove: Iterable[str], video_encoder: str,
                   objects_dims: Sequence[int], events_dims: Sequence[int], chunk: int = DEFAULT_CHUNK,
                   progress: bool = True) -> dict:
    """A new version in `out` from version directory `base`: its kept segments hard-linked (not copied), ids in
    `remove` hidden, `add` written as a new segment encoded with base's trained index. Re-adding an id replaces it.
    Unknown ids in `remove` are refused before anything is written."""
    base, out = Path(base), Path(out)
    remove = set(remove)
    manifest = S.read_manifest(base) or _client_layout(base, video_encoder, objects_dims, events_dims)
    if manifest["video_encoder_sha256"] != video_encoder:
        raise GalleryError(f"{base} was encoded by video encoder {manifest['video_encoder_sha256']}, the new "
                           f"prototypes by {video_encoder}: rebuild the whole gallery instead")
    added = list(add.video_ids) if add is not None else []
    both = sorted(remove & set(added))
    if both:
        raise GalleryError(f"{len(both)} id(s) both added and removed: {', '.join(both[:5])}; re-adding an id "
                           f"replaces it, so list it in one place only")
    if add is not None:
        check_prototypes(add.video_ids, add.objects, add.events, source="added prototypes")
        _check_dims(add, objects_dims, events_dims)
    segment_ids = {entry["dir"]: S.read_ids(base / entry["dir"] / G.IDS_FILE) for entry in manifest["segments"]}
    present = set()
    for entry in manifest["segments"]:
        present |= set(segment_ids[entry["dir"]]) - set(entry.get("removed", []))
    unknown = sorted(remove - present)
    if unknown:
        raise GalleryError(f"cannot remove {len(unknown)} id(s) the gallery does not hold: {', '.join(unknown[:5])}")
    out.mkdir(parents=True, exist_ok=True)
    hidden = remove | set(added)
    segments, number = [], 0
    for entry in manifest["segments"]:
        number = max(number, int(entry["dir"].rsplit("-", 1)[-1]) if entry["dir"].startswith("seg-") else 0)
        ids = segment_ids[entry["dir"]]
        gone = sorted((set(entry.get("removed", [])) | (hidden & set(ids))))
        if len(gone) == len(ids):
            continue  # every video of this segment is removed: the new version drops it
        target = segment_name(number) if entry["dir"] == "." else entry["dir"]
        link_tree(base / entry["dir"], out / target, list(entry["files"]))
        segments.append({**entry, "dir": target, "removed": gone})
    index = manifest.get("index")
    if index is not None:
        link_tree(base, out, list(index["files"]))
    if add is not None and added:
        codec, events_trained = _read_trained(out) if index is not None else (None, None)
        segments.append(write_segment(out / segment_name(number + 1), add, video_encoder=video_encoder,
                                      codec=codec, events_trained=events_trained,
                                      fp16_objects=index is None or index["fp16_objects"],
                                      objects_dtype=manifest.get("objects_dtype", "fp16"), chunk=chunk,
                                      progress=progress))
    manifest = {**manifest, "segments": segments}
    S.write_manifest(out, manifest)
    return manifest


def next_version(out: Path, latest: Path | None, prototypes: Prototypes, *, video_encoder: str,
                 incremental: bool = False, remove: Iterable[str] = (), chunk: int = DEFAULT_CHUNK,
                 progress: bool = True) -> dict:
    """The data of the gallery version after `latest` (a version directory; None before the first), as a client
    publishes it: `prototypes` added to latest and `remove` hidden (incremental, checked against latest's dims), or a
    full build of `prototypes` that keeps latest's search parameters, objects dtype and fp16 store, so a gallery
    built large with `prost gallery build` stays two-stage (its dims are checked against the graph at load)."""
    if incremental:
        if latest is None:
            raise GalleryError("an incremental version needs a version to start from; publish the whole gallery first")
        objects_dims, events_dims = version_dims(latest)
        return update_version(out, latest, add=prototypes if len(prototypes.video_ids) else None, remove=remove,
                              video_encoder=video_encoder, objects_dims=objects_dims, events_dims=events_dims,
                              chunk=chunk, progress=progress)
    if remove:
        raise GalleryError("removing videos needs an incremental version (a full one holds only the videos given)")
    manifest = S.read_manifest(latest) if latest is not None else None
    settings: dict[str, Any] = {}
    if manifest is not None:
        index = manifest.get("index")
        settings = {"params": S.SearchParams.from_json(manifest.get("search"), latest / S.GALLERY_FILE),
                    "objects_dtype": manifest.get("objects_dtype", "fp16"),
                    "options": IndexOptions(fp16_objects=index is None or index["fp16_objects"])}
    try:
        return build_version(out, prototypes, video_encoder=video_encoder, objects_dims=prototypes.objects.shape[1:],
                             events_dims=prototypes.events.shape[1:], chunk=chunk, progress=progress, **settings)
    except GalleryError as exc:
        if settings.get("objects_dtype") != "bf16":
            raise
        raise GalleryError(f"{exc} ({latest} stores bf16 objects, which a published version keeps: rebuild the "
                           f"gallery with `prost gallery build --objects-dtype fp16` to publish these)") from None


def version_dims(directory: Path) -> tuple[list[int], list[int]]:
    """The objects [L, No, D] and events [Ne, D] dims a version directory stores (either layout)."""
    manifest = S.read_manifest(directory)
    if manifest is not None:
        return list(manifest["objects"]), list(manifest["events"])
    try:
        header = G.safetensors_header(Path(directory) / G.TENSORS_FILE)[0]
        return list(header["objects"]["shape"][1:]), list(header["events"]["shape"][1:])
    except (OSError, ValueError, KeyError) as exc:
        raise GalleryError(f"cannot read the dims of {directory / G.TENSORS_FILE}: {exc}") from None


def _client_layout(base: Path, video_encoder: str, objects_dims: Sequence[int], events_dims: Sequence[int]) -> dict:
    """gallery.json of a version in the client layout (one exact segment at the root, no manifest)."""
    return {"format": S.FORMAT, "video_encoder_sha256": G.safetensors_metadata(base / G.TENSORS_FILE).get(
        G.ENCODER_STAMP), "objects": list(objects_dims), "events": list(events_dims), "index": None,
        "search": asdict(S.SearchParams()),
        "segments": [{"dir": ".", "videos": len(S.read_ids(base / G.IDS_FILE)), "removed": [],
                      "files": S.file_sizes(base, [G.IDS_FILE, G.TENSORS_FILE])}]}


def _read_trained(directory: Path) -> tuple[S.Codec, Any]:
    """The codec and trained events index of a version directory."""
    faiss = S.faiss_module()
    codec = S.Codec(faiss.read_index(str(directory / S.TRAINED_OBJECTS)), sha256_file(directory / S.TRAINED_OBJECTS))
    return codec, faiss.read_index(str(directory / S.TRAINED_EVENTS))


def link_tree(source: Path, target: Path, names: list[str]) -> None:
    """Hard-link files (relative names) from `source` into `target`; copies where the filesystem cannot link."""
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source / name, target / name)
