"""Gallery versions on disk: segments of fp16 prototypes, their compressed codes and FAISS indexes, memory-mapped.

A version directory is either the client layout of `prost_client.gallery_format` (one exact segment at the root:
gallery.safetensors + video_ids.json) or this layout, which `prost gallery build` writes:

  gallery.json                  GALLERY_FILE: format, video encoder, dims, segments (with their file sizes and the
                                ids a later version removed), the trained index (or null: exact only) and the search
                                parameters
  index/events.trained.faiss    trained, empty fast-scan PQ index of event vectors (4-bit codes of 2 dimensions,
                                searched exhaustively); new segments are added to copies. Versions built before
                                it hold an IVF-SQ8 index here, still searched (with `nprobe` lists)
  index/objects.trained.faiss   trained, empty IVF-PQ index of object vectors: the codec of their codes (coarse
                                centroid id + PQ residual, ColBERTv2's layout)
  seg-NNNNNN/video_ids.json     the segment's ids, in row order
  seg-NNNNNN/gallery.safetensors  "events" fp16 [n, Ne, D] and, unless built without the fp16 store, "objects" fp16
                                [n, L, No, D]; metadata stamps the video encoder
  seg-NNNNNN/codes.safetensors  "codes" u8 [n, L * No, code size]: each object vector's code (two-stage)
  seg-NNNNNN/postings.safetensors  "offsets" i64 [lists + 1], "rows" i32: the rows whose objects fall in each coarse
                                centroid (PLAID's candidate lists) (two-stage)
  seg-NNNNNN/events.faiss       the segment's event vectors, id = row * Ne + k (two-stage)
The codes and postings files name the sha256 of the codec they were made with (metadata CODEC_KEY); every
safetensors file of a segment names the segment's uid (SEGMENT_KEY), and gallery.json the events index's sha256.

Files are written once and never modified, so a new version hard-links the segments it keeps (incremental
publishing adds a segment and lists removed ids). The fp16 store and the codes are memory-mapped, the FAISS indexes
read into RAM; sizes are checked against gallery.json first, so a truncated file fails the load with its name
instead of faulting at the first search.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prost.errors import DependencyError, GalleryError
from prost.fileio import fsync_path, sha256_file
from prost_client import gallery_format as G

GALLERY_FILE = "gallery.json"
FORMAT = "prost-gallery/2"
CODES_FILE = "codes.safetensors"
POSTINGS_FILE = "postings.safetensors"
EVENTS_INDEX = "events.faiss"
CODEC_KEY = "codec_sha256"
SEGMENT_KEY = "segment"  # safetensors metadata: the uid of the segment a file belongs to
TRAINED_EVENTS = "index/events.trained.faiss"
TRAINED_OBJECTS = "index/objects.trained.faiss"
GPU_SWITCH = "PROST_FAISS_GPU"  # "0": builds keep faiss-gpu's k-means and assignment on the CPU


@dataclass(frozen=True)
class SearchParams:
    """Parameters of a gallery version's search (gallery.json "search"); README: Gallery engine."""

    exact_below: int = 20_000  # galleries with fewer videos are scored exactly
    nprobe: int = 8  # object centroids probed per phrase (their videos); and the lists of an older IVF events index
    candidates: int = 256  # videos from each candidate source: S_es (events index) and S_op (centroid interaction)
    events_refine: int = 4  # event vectors the fast-scan codes propose per wanted one, re-scored from the fp16 store
    rerank: int = 256  # best approximate videos scored exactly (the fp16 store) for the final top-k
    interaction: int = 2 ** 25  # centroid lookups (videos x objects) a text; beyond, postings prune the videos

    def __post_init__(self) -> None:
        bad = {f.name: getattr(self, f.name) for f in fields(self)
               if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1}
        if bad:
            raise GalleryError(f"search parameters must be positive integers; got {bad}")

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None, source: Path) -> SearchParams:
        """The parameters stored in gallery.json; GalleryError naming `source` when they are not valid."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise GalleryError(f"{source}: unknown search parameters {unknown}")
        try:
            return cls(**raw)
        except GalleryError as exc:
            raise GalleryError(f"{source}: {exc}") from None


def faiss_module() -> Any:
    """The faiss module, or DependencyError naming the package. Its first import runs under `faiss_openblas_core`'s
    OPENBLAS_CORETYPE, restored after, so the OpenBLAS bundled in faiss-cpu does not fall back to generic kernels."""
    core = faiss_openblas_core() if "faiss" not in sys.modules else None
    before = os.environ.get("OPENBLAS_CORETYPE")
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    except ImportError as exc:
        raise DependencyError("two-stage galleries need faiss: pip install faiss-cpu==1.15.1 (in the project's "
                              "dependencies), or faiss-gpu on GPU hosts") from exc
    finally:
        if core is not None and before is None:
            del os.environ["OPENBLAS_CORETYPE"]
        elif core is not None:  # set, but empty
            os.environ["OPENBLAS_CORETYPE"] = before
    return faiss


def faiss_openblas_core() -> str | None:
    """The OpenBLAS kernel family for faiss-cpu's bundled OpenBLAS (0.3.15), when the environment names none: it takes
    CPUs newer than itself (Cooper Lake, Sapphire Rapids) for a pre-AVX x86-64 and runs 2.5x slower here (IVF-PQ
    encoding, 44k -> 108k vectors/s). SkylakeX where the CPU has AVX-512 (F, CD, BW, DQ, VL), Haswell with AVX2 and
    FMA; None otherwise, or when OPENBLAS_CORETYPE is set (it then applies to every OpenBLAS)."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None
    try:
        from numpy.core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:
        return None
    if cpu.get("AVX512_SKX"):
        return "SkylakeX"
    return "Haswell" if cpu.get("AVX2") and cpu.get("FMA3") else None


def on_gpus(index: Any) -> Any:
    """A copy of a flat index on every GPU faiss sees (faiss-gpu, the `gpu` extra; CUDA_VISIBLE_DEVICES picks them),
    or None where it sees none or PROST_FAISS_GPU=0 (faiss-gpu aborts the process when CUDA fails other than by
    finding no device, e.g. with a driver too old): the build's k-means and coarse assignment run there (on 2 CPU
    cores, assigning 1M ViT-B/32 videos' 144M object vectors to 16,384 lists takes 1.6 h)."""
    faiss = faiss_module()
    if os.environ.get(GPU_SWITCH) == "0" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    return faiss.index_cpu_to_all_gpus(index)


@dataclass
class Segment:
    """One segment's arrays, memory-mapped; `codes` and the indexes are None in exact-only versions."""

    path: Path
    ids: list[str]
    events: np.ndarray  # fp16 [n, Ne, D]
    objects: np.ndarray | None  # fp16 or bf16 [n, L, No, D]; None when built without the store
    codes: np.ndarray | None = None  # u8 [n, L * No, code size]
    coarse: np.ndarray | None = None  # [L * No, n]: each object's coarse centroid, slot-major, in RAM
    offsets: np.ndarray | None = None  # i64 [lists + 1]: rows[offsets[c]:offsets[c + 1]] hold objects of centroid c
    rows: np.ndarray | None = None  # i32
    removed: frozenset[str] = frozenset()  # ids of this segment hidden by a later version
    events_index: Any = None


class Codec:
    """The trained objects index as a codec of object vectors: coarse centroid id (little-endian, the first
    `id_bytes` of a code) + PQ residual. `sha256` names the file, so codes made by another codec are refused."""

    def __init__(self, trained: Any, sha256: str) -> None:
        faiss = faiss_module()
        ivf = faiss.extract_index_ivf(trained)
        self.index, self.sha256 = trained, sha256
        self.code_size = trained.sa_code_size()
        self.id_bytes = ivf.coarse_code_size()
        self.centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)  # [lists, D]

    @cached_property
    def gpu_quantizer(self) -> Any:
        """The coarse centroids in a flat inner-product index on the GPUs (`on_gpus`), made at the first encode, so a
        served version never takes a GPU; None without one."""
        quantizer = faiss_module().IndexFlatIP(self.centroids.shape[1])
        quantizer.add(self.centroids)
        return on_gpus(quantizer)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes [n, code size] of float32 vectors [n, D]; their coarse assignment, the dominant cost, on the GPUs
        where faiss sees any."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.gpu_quantizer is None:
            return self.index.sa_encode(vectors)
        return self.encode_assigned(vectors, self.gpu_quantizer.search(vectors, 1)[1][:, 0])

    def encode_assigned(self, vectors: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """Codes [n, code size] of float32 vectors [n, D] whose coarse centroids `lists` [n] were found elsewhere: the
        bytes sa_encode writes when it finds the same centroids."""
        faiss = faiss_module()
        vectors, lists = np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(lists, np.int64)
        ivf = faiss.downcast_index(self.index)
        if not isinstance(ivf, faiss.IndexIVF):  # a transform before the IVF would be skipped
            raise ValueError(f"codes from given centroids need a bare IVF index, not {type(ivf).__name__}")
        if len(lists) != len(vectors) or (len(lists) and (lists.min() < 0 or lists.max() >= len(self.centroids))):
            raise ValueError(f"{len(lists)} centroid ids for {len(vectors)} vectors, each in [0, "
                             f"{len(self.centroids)}) expected")
        codes = np.empty((len(vectors), self.code_size), np.uint8)
        ivf.encode_vectors(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(lists), faiss.swig_ptr(codes), True)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Vectors [..., D] (float32) of codes [..., code size]."""
        flat = np.ascontiguousarray(codes).reshape(-1, self.code_size)
        return self.index.sa_decode(flat).reshape(*codes.shape[:-1], -1)

    def coarse(self, codes: np.ndarray) -> np.ndarray:
        """Coarse centroid ids [...] (int64) of codes [..., code size]."""
        ids = np.zeros(codes.shape[:-1], np.int64)
        for b in range(self.id_bytes):
            ids |= codes[..., b].astype(np.int64) << (8 * b)
        return ids

    def coarse_view(self, codes: np.ndarray) -> np.ndarray:
        """The coarse ids of codes [n, slots, code size] as a zero-copy strided view [n, slots] (little-endian
        unsigned of `id_bytes`), so centroid interaction gathers 2 bytes per object instead of decoding codes."""
        if self.id_bytes not in (1, 2, 4):
            return self.coarse(np.asarray(codes))
        return np.asarray(codes)[..., :self.id_bytes].view(f"<u{self.id_bytes}")[..., 0]


@dataclass
class Version:
    """A loaded gallery version: its segments in order, the trained objects index (the decoder of the codes) and the
    search parameters."""

    segments: list[Segment]
    objects_dims: tuple[int, ...]  # (L, No, D)
    events_dims: tuple[int, ...]  # (Ne, D)
    params: SearchParams = field(default_factory=SearchParams)
    codec: Codec | None = None  # of the object codes (two-stage versions)
    objects_dtype: str = "fp16"  # of the object store: "fp16" or "bf16" (gallery_format.OBJECT_DTYPES)

    @property
    def indexed(self) -> bool:
        """Whether the version has a two-stage index."""
        return self.codec is not None

    @property
    def fp16_objects(self) -> bool:
        """Whether the fp16 object prototypes are stored (else only their codes)."""
        return all(s.objects is not None for s in self.segments)


def safetensors_arrays(path: Path, *, expect_size: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read-only memory maps of every tensor in a safetensors file, and its metadata; GalleryError naming the file
    when it is not one, is shorter than its header says, or differs from `expect_size` bytes."""
    names = {v: k for k, v in G.SAFETENSORS_DTYPES.items()}
    try:
        header, start = G.safetensors_header(path)
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise GalleryError(f"cannot read {path}: {exc}") from None
    if expect_size is not None and size != expect_size:
        raise GalleryError(f"{path} has {size} bytes, gallery.json says {expect_size}: the file is truncated or "
                           f"from another build; rebuild this version (`prost gallery build`)")
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = names[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise GalleryError(f"{path}: tensor {name!r} has an unsupported header entry {entry}") from None
        if hi - lo != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or start + hi > size:
            raise GalleryError(f"{path}: tensor {name!r} {list(shape)} does not fit the file ({size} bytes); the file "
                               f"is truncated or corrupt")
        arrays[name] = (np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=start + lo, shape=shape)
                        if hi > lo else np.zeros(shape, dtype))
    return arrays, header.get("__metadata__", {})


def read_ids(path: Path) -> list[str]:
    """A segment's video ids (a JSON list of unique strings), or GalleryError naming the file."""
    try:
        ids = json.loads(path.read_text())["video_ids"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalleryError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids) or len(set(ids)) != len(ids):
        raise GalleryError(f"{path}: video_ids must be a list of unique strings")
    return ids


def read_index(path: Path, expect_size: int, ntotal: int, dim: int, like: Any = None) -> Any:
    """A FAISS index, read into RAM (memory-mapped, the IVF events index of earlier versions searched 2-7x slower),
    checked against its expected size, vector count, dimension and (for a segment's index) the trained index it was
    added to; GalleryError naming the file otherwise."""
    faiss = faiss_module()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise GalleryError(f"cannot read {path}: {exc}") from None
    if size != expect_size:
        raise GalleryError(f"{path} has {size} bytes, gallery.json says {expect_size}: the file is truncated or from "
                           f"another build; rebuild this version (`prost gallery build`)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise GalleryError(f"cannot read {path}: {str(exc).splitlines()[-1]}") from None
    if index.ntotal != ntotal or index.d != dim:
        raise GalleryError(f"{path} holds {index.ntotal} vectors of dimension {index.d}, expected {ntotal} of "
                           f"{dim}: it belongs to another segment or build")
    if like is not None and not same_quantizer(index, like):
        raise GalleryError(f"{path} was not added to this version's trained index ({TRAINED_OBJECTS} / "
                           f"{TRAINED_EVENTS}): it comes from another build")
    return index


def same_quantizer(a: Any, b: Any) -> bool:
    """Whether two indexes share their trained quantisers (an IVF's coarse centroids, PQ codebooks) and code layout."""
    faiss = faiss_module()
    if type(a) is not type(b) or a.d != b.d or a.sa_code_size() != b.sa_code_size():
        return False
    ia, ib = faiss.try_extract_index_ivf(a), faiss.try_extract_index_ivf(b)
    if ia is not None:
        if ia.nlist != ib.nlist or not np.array_equal(ia.quantizer.reconstruct_n(0, ia.nlist),
                                                      ib.quantizer.reconstruct_n(0, ib.nlist)):
            return False
        a, b = faiss.downcast_index(ia), faiss.downcast_index(ib)
    if not hasattr(a, "pq"):
        return True
    return np.array_equal(faiss.vector_to_array(a.pq.centroids), faiss.vector_to_array(b.pq.centroids))


def read_manifest(directory: Path) -> dict | None:
    """gallery.json of a version directory, or None for the client's single-segment layout."""
    path = Path(directory) / GALLERY_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GalleryError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path} is not a {FORMAT} manifest")
    return manifest


def version_stamp(directory: Path) -> str | None:
    """The video encoder a version directory's gallery was encoded by (None when unstamped); ValueError or
    GalleryError when it cannot be read."""
    manifest = read_manifest(directory)
    if manifest is not None:
        return manifest.get("video_encoder_sha256")
    return G.safetensors_metadata(Path(directory) / G.TENSORS_FILE).get(G.ENCODER_STAMP)


def data_files(directory: Path) -> dict[str, Path]:
    """Every data file of a gallery version (all but model.py and similarity.onnx), by relative POSIX path."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
            and p.relative_to(directory).as_posix() not in (G.MODEL_FILE, G.SIMILARITY_FILE)}


def load_version(directory: Path, objects_dims: list[int], events_dims: list[int], video_encoder: str) -> Version:
    """Open a gallery version for search: every file checked (sizes, shapes, vector counts, the video encoder stamp),
    arrays and indexes memory-mapped. GalleryError names the first file that does not fit."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:  # the client layout: one exact segment at the root
        segment = _segment(directory, {}, objects_dims, events_dims, video_encoder, require_objects=True,
                           objects_dtype="fp16")
        return Version([segment], tuple(objects_dims), tuple(events_dims))
    where = directory / GALLERY_FILE
    stamp = manifest.get("video_encoder_sha256")
    if stamp != video_encoder:
        raise GalleryError(f"{where}: encoded by video encoder {stamp}, this gallery serves {video_encoder}: its "
                           f"prototypes would not match the served text encoder; rebuild it from prototypes of the "
                           f"served encoder (`prost gallery encode` / `prost gallery build`)")
    if [manifest.get("objects"), manifest.get("events")] != [list(objects_dims), list(events_dims)]:
        raise GalleryError(f"{where}: dims objects {manifest.get('objects')} events {manifest.get('events')} do not "
                           f"match the similarity graph's {objects_dims} and {events_dims}")
    params = SearchParams.from_json(manifest.get("search"), where)
    objects_dtype = manifest.get("objects_dtype", "fp16")  # versions before bf16 stores say nothing
    if objects_dtype not in G.OBJECT_DTYPES:
        raise GalleryError(f"{where}: objects_dtype must be one of {', '.join(G.OBJECT_DTYPES)}, got {objects_dtype!r}")
    index, codec, trained_events = manifest.get("index"), None, None
    if index is not None and not (isinstance(index, dict) and isinstance(index.get("files"), dict)):
        raise GalleryError(f"{where}: 'index' must be null or an object with 'files'")
    if index is not None:
        sizes = index["files"]
        trained = read_index(directory / TRAINED_OBJECTS, sizes.get(TRAINED_OBJECTS, -1), 0, objects_dims[-1])
        codec = Codec(trained, sha256_file(directory / TRAINED_OBJECTS))
        trained_events = read_index(directory / TRAINED_EVENTS, sizes.get(TRAINED_EVENTS, -1), 0, events_dims[-1])
    segments = []
    segments_json = manifest.get("segments")
    if not isinstance(segments_json, list) or not all(
            isinstance(e, dict) and isinstance(e.get("dir"), str) and "/" not in e["dir"] and e["dir"] not in ("", "..")
            and isinstance(e.get("files"), dict) for e in segments_json):
        raise GalleryError(f"{where}: 'segments' must be a list of {{dir, videos, files}} entries, each dir a folder "
                           f"of this version")
    for entry in segments_json:
        segment = _segment(directory / entry["dir"], entry["files"], objects_dims, events_dims, video_encoder,
                           require_objects=index is None or index.get("fp16_objects", True),
                           objects_dtype=objects_dtype, entry=entry)
        segment.removed = frozenset(entry.get("removed", []))
        if codec is not None:
            _attach_index(segment, entry, objects_dims, events_dims, codec, trained_events)
        segments.append(segment)
    ids = [v for s in segments for v in s.ids if v not in s.removed]
    if len(set(ids)) != len(ids):
        raise GalleryError(f"{where}: a video id is live in two segments")
    return Version(segments, tuple(objects_dims), tuple(events_dims), params, codec, objects_dtype)


def _segment(path: Path, sizes: dict[str, int], objects_dims: list[int], events_dims: list[int], video_encoder: str,
             *, require_objects: bool, objects_dtype: str, entry: dict | None = None) -> Segment:
    """One segment's ids and store (events fp16, objects in `objects_dtype`); `entry` (its gallery.json entry) gives
    the sizes, count and uid to check."""
    if entry is not None:
        try:
            size = (path / G.IDS_FILE).stat().st_size
        except OSError as exc:
            raise GalleryError(f"cannot read {path / G.IDS_FILE}: {exc}") from None
        if size != sizes.get(G.IDS_FILE):
            raise GalleryError(f"{path / G.IDS_FILE} has {size} bytes, gallery.json says {sizes.get(G.IDS_FILE)}: "
                               f"it is truncated or from another build")
    ids = read_ids(path / G.IDS_FILE)
    if entry is not None and len(ids) != entry.get("videos"):
        raise GalleryError(f"{path / G.IDS_FILE} lists {len(ids)} videos, gallery.json says {entry.get('videos')}")
    tensors_path = path / G.TENSORS_FILE
    arrays, metadata = safetensors_arrays(tensors_path, expect_size=sizes.get(G.TENSORS_FILE, -1) if entry else None)
    _check_uid(tensors_path, metadata, entry)
    stamp = metadata.get(G.ENCODER_STAMP)
    if stamp is None:
        raise GalleryError(f"{tensors_path} was written before galleries named their video encoder; run "
                           f"`prost repository build` on this repository again (it stamps the latest gallery when "
                           f"the export is unchanged), or re-index the videos (`prost-client index`)")
    if stamp != video_encoder:
        raise GalleryError(f"{tensors_path} was encoded by video encoder {stamp}, this gallery serves "
                           f"{video_encoder}: its prototypes would not match the served text encoder; re-index the "
                           f"videos through the served models (`prost-client index`)")
    expected = {"objects": [len(ids), *objects_dims], "events": [len(ids), *events_dims]}
    for name in ("objects", "events"):
        if name not in arrays and (name == "events" or require_objects):
            raise GalleryError(f"{tensors_path} must hold 'objects' and 'events'; has {sorted(arrays)}")
        if name in arrays and list(arrays[name].shape) != expected[name]:
            raise GalleryError(f"{tensors_path}: {name} has shape {list(arrays[name].shape)}, expected "
                               f"{expected[name]} ({len(ids)} video ids)")
    if "objects" in arrays and arrays["objects"].dtype != G.OBJECT_DTYPES[objects_dtype]:
        raise GalleryError(f"{tensors_path}: objects are {G.SAFETENSORS_DTYPES.get(arrays['objects'].dtype)}, "
                           f"expected {G.SAFETENSORS_DTYPES[G.OBJECT_DTYPES[objects_dtype]]} (objects_dtype "
                           f"{objects_dtype}): the file is from another build")
    return Segment(path, ids, arrays["events"], arrays.get("objects"))


def _check_uid(path: Path, metadata: dict, entry: dict | None) -> None:
    """A segment file's uid (metadata SEGMENT_KEY) must be its gallery.json entry's: files of two segments of one
    build have the same sizes and codec."""
    if entry is not None and metadata.get(SEGMENT_KEY) != entry.get("uid"):
        raise GalleryError(f"{path} belongs to segment {metadata.get(SEGMENT_KEY)}, gallery.json lists segment "
                           f"{entry.get('uid')} here: it was copied from another segment")


def slot_major(coarse: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Coarse ids [n, slots] (a strided view of the memory-mapped codes) as a contiguous [slots, n] array in RAM, read
    in chunks: centroid interaction then gathers each slot's ids from one short row instead of a strided read of
    whole codes (2 bytes of every 18 at tiny shapes), and reduces over frames with long vector loops."""
    out = np.empty(coarse.shape[::-1], coarse.dtype)
    for v0 in range(0, len(coarse), chunk):
        out[:, v0:v0 + chunk] = np.asarray(coarse[v0:v0 + chunk]).T
    return out


def _attach_index(segment: Segment, entry: dict, objects_dims: list[int], events_dims: list[int], codec: Codec,
                  trained_events: Any) -> None:
    """Open and check a segment's codes, postings and events index."""
    n, slots, sizes = len(segment.ids), objects_dims[0] * objects_dims[1], entry["files"]
    arrays = {}
    for name in (CODES_FILE, POSTINGS_FILE):
        path = segment.path / name
        found, metadata = safetensors_arrays(path, expect_size=sizes.get(name, -1))
        _check_uid(path, metadata, entry)
        if metadata.get(CODEC_KEY) != codec.sha256:
            raise GalleryError(f"{path} was made with another codec than {TRAINED_OBJECTS} (sha256 "
                               f"{metadata.get(CODEC_KEY)}, expected {codec.sha256}): it comes from another build")
        arrays.update(found)
    lists = len(codec.centroids)
    expected = {"codes": [n, slots, codec.code_size], "offsets": [lists + 1]}
    for name, shape in expected.items():
        if name not in arrays or list(arrays[name].shape) != shape:
            raise GalleryError(f"{segment.path}: expected {name} {shape} in {CODES_FILE} / {POSTINGS_FILE}, found "
                               f"{ {k: list(v.shape) for k, v in arrays.items()} }")
    offsets, rows = np.asarray(arrays["offsets"]), arrays.get("rows")
    if (rows is None or offsets[0] != 0 or offsets[-1] != len(rows) or np.any(np.diff(offsets) < 0)
            or (len(rows) and (np.min(rows) < 0 or np.max(rows) >= n))):
        raise GalleryError(f"{segment.path / POSTINGS_FILE}: its offsets and rows do not index this segment")
    segment.codes, segment.offsets = arrays["codes"], offsets
    segment.rows = np.asarray(rows)  # a plain ndarray view: search slices it once per probed list
    segment.coarse = slot_major(codec.coarse_view(arrays["codes"]))
    events = segment.path / EVENTS_INDEX
    segment.events_index = read_index(events, sizes.get(EVENTS_INDEX, -1), n * events_dims[0], events_dims[-1],
                                      trained_events)
    if sha256_file(events) != entry.get("events_sha256"):
        raise GalleryError(f"{events} is not the events index gallery.json lists for this segment (sha256 differs): "
                           f"it comes from another segment or build")


class TensorStream:
    """A safetensors file written tensor by tensor and chunk by chunk, in the order of `shapes`: memory is bounded by
    the chunk. `close()` checks that every byte announced in the header was written, then fsyncs."""

    def __init__(self, path: Path, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._pending = [(name, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
                         for name, (dtype, shape) in shapes.items()]
        self._file = open(self.path, "wb")
        self._file.write(G.safetensors_header_bytes(shapes, metadata))
        self._left = self._pending[0][2] if self._pending else 0

    def write(self, name: str, chunk: np.ndarray) -> None:
        """Append rows of tensor `name` (the current one in header order)."""
        while self._pending and self._left == 0:
            self._next()
        if not self._pending or self._pending[0][0] != name:
            raise ValueError(f"{self.path}: expected data of {self._pending[0][0] if self._pending else 'nothing'}, "
                             f"got {name}")
        data = np.ascontiguousarray(chunk, dtype=self._pending[0][1].newbyteorder("<"))
        if data.nbytes > self._left:
            raise ValueError(f"{self.path}: more data for {name} than its header announces")
        self._file.write(data.tobytes())
        self._left -= data.nbytes

    def _next(self) -> None:
        self._pending.pop(0)
        self._left = self._pending[0][2] if self._pending else 0

    def close(self) -> None:
        while self._pending and self._left == 0:
            self._next()
        self._file.close()
        if self._pending:
            raise ValueError(f"{self.path}: {self._pending[0][0]} is missing {self._left} bytes")
        fsync_path(self.path)


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write gallery.json (the last file of a version, after its data)."""
    path = Path(directory) / GALLERY_FILE
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    fsync_path(path)


def file_sizes(directory: Path, names: list[str]) -> dict[str, int]:
    """{name: bytes} of files in a directory, for gallery.json."""
    return {name: os.stat(Path(directory) / name).st_size for name in names}
