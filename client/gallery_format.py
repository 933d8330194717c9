"""The gallery version format, shared by the client that publishes galleries and the server that stores and serves
them. Dependency-free (numpy and the standard library); errors are ValueError, each side wraps them in its own type.

A version directory `prost_gallery/<N>/` holds:
  model.py              the tiny MODEL_SOURCE below (the implementation is installed on the server)
  similarity.onnx       the exported pairwise similarity graph; the repository's copy takes the fp16 prototypes
  gallery.safetensors   "objects" fp16 [N, L, No, D] and "events" fp16 [N, Ne, D]; its metadata names the video
                        encoder that produced them (ENCODER_STAMP). `prost gallery build --objects-dtype bf16`
                        stores the objects in bfloat16 instead (OBJECT_DTYPES)
  video_ids.json        {"video_ids": [N strings]}, row i of the tensors belongs to video_ids[i]
This is what clients write: one exact segment at the root. `prost gallery build` writes the segmented, indexed
layout of `prost.gallery.store` (a `gallery.json` beside these files), which the server reads as well.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

MODEL_FILE = "model.py"
SIMILARITY_FILE = "similarity.onnx"
TENSORS_FILE = "gallery.safetensors"
IDS_FILE = "video_ids.json"
ENCODER_STAMP = "video_encoder_sha256"  # safetensors metadata key of the gallery's video encoder

# Byte-identical to model_repository/gallery/model.py (a test checks it), so a client can upload a version.
MODEL_SOURCE = '''"""prost_gallery: scores text prototypes against the gallery stored in this version directory."""

from prost_model_repository.gallery.impl import TritonPythonModel  # noqa: F401
'''


# safetensors dtype names of the numpy dtypes galleries store (bfloat16 from ml_dtypes, numpy has none).
SAFETENSORS_DTYPES = {np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float32): "F32",
                      np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
# The dtypes a gallery may store its object prototypes in; events are always fp16.
OBJECT_DTYPES = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}


def safetensors_header_bytes(shapes: dict[str, tuple[np.dtype, tuple[int, ...]]],
                             metadata: dict[str, str] | None = None) -> bytes:
    """The u64 length and padded JSON header of a safetensors file whose tensors (dtype, shape) follow in order, so
    a writer can stream the data after it."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, (dtype, shape) in shapes.items():
        dtype = np.dtype(dtype)
        if dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {name!r}: unsupported dtype {dtype}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise arrays in the safetensors layout: u64 header length, JSON header, contiguous data."""
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    head = safetensors_header_bytes({name: (a.dtype, a.shape) for name, a in arrays.items()}, metadata)
    return head + b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays.values())


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data starts; ValueError when it is not one."""
    with open(path, "rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= 100_000_000:  # the format's own header limit
            raise ValueError(f"{path} is not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object with a __metadata__ object")
    return header, 8 + size


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header alone; ValueError when it is not one."""
    return safetensors_header(path)[0].get("__metadata__", {})


def gallery_files(video_ids: Sequence[str], objects: np.ndarray, events: np.ndarray, *,
                  video_encoder: str) -> dict[str, bytes]:
    """The data files of one gallery version (everything but model.py and similarity.onnx), stamped with the
    sha256 of the video encoder that produced the prototypes (`protocol.VIDEO_ENCODER_PARAM`)."""
    ids = [str(v) for v in video_ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({v for v in ids if ids.count(v) > 1})
        raise ValueError(f"video ids must be unique; repeated: {', '.join(dupes[:5])}")
    objects = np.asarray(objects)
    events = np.asarray(events)
    if objects.ndim != 4 or events.ndim != 3 or not len(ids) == objects.shape[0] == events.shape[0]:
        raise ValueError(f"expected objects [N, L, No, D] and events [N, Ne, D] for N={len(ids)} ids, "
                         f"got {list(objects.shape)} and {list(events.shape)}")
    tensors = {"objects": objects.astype(np.float16), "events": events.astype(np.float16)}
    return {
        TENSORS_FILE: safetensors_bytes(tensors, {"format": "prost-gallery", "videos": str(len(ids)),
                                                  ENCODER_STAMP: video_encoder}),
        IDS_FILE: (json.dumps({"video_ids": ids}, ensure_ascii=False) + "\n").encode(),
    }


def read_id_list(path: Path) -> list[str]:
    """Video ids of a text file, one a line (blank lines and surrounding spaces ignored): what `--remove` takes."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the id list {path}: {exc}") from None


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories of a model, ascending (Triton ignores other names and those starting with 0)."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))
