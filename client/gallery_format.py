"""The gallery version format, shared by the client that publishes galleries and the server that stores and serves
them. Dependency-free (numpy and the standard library); errors are ValueError, each side wraps them in its own type.

A version directory `prost_gallery/<N>/` holds:
  model.py              the tiny MODEL_SOURCE below (the implementation is installed on the server)
  similarity.onnx       the exported pairwise similarity graph; the repository's copy takes the fp16 prototypes
  gallery.safetensors   "objects" fp16 [N, L, No, D] and "events" fp16 [N, Ne, D]; its metadata names the video
                        encoder that produced them (ENCODER_STAMP)
  video_ids.json        {"video_ids": [N strings]}, row i of the tensors belongs to video_ids[i]
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

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


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise arrays in the safetensors layout: u64 header length, JSON header, contiguous data."""
    dtypes = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in dtypes:
            raise TypeError(f"tensor {name!r}: unsupported dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header alone; ValueError when it is not one."""
    with open(path, "rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= 100_000_000:  # the format's own header limit
            raise ValueError(f"{path} is not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable safetensors header ({exc})") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object with a __metadata__ object")
    return metadata


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


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories of a model, ascending (Triton ignores other names and those starting with 0)."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))
