"""The gallery version format shared by the client, the repository writer and the `prost_gallery` model.

A version directory `prost_gallery/<N>/` holds:
  model.py              the tiny MODEL_SOURCE below (the implementation is installed on the server)
  similarity.onnx       the exported pairwise similarity graph, copied from the export
  gallery.safetensors   "objects" fp16 [N, L, No, D] and "events" fp16 [N, Ne, D]
  video_ids.json        {"video_ids": [N strings]}, row i of the tensors belongs to video_ids[i]
Torch-free and prost-free: the client writes galleries with numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_FILE = "model.py"
SIMILARITY_FILE = "similarity.onnx"
TENSORS_FILE = "gallery.safetensors"
IDS_FILE = "video_ids.json"
MANIFEST_FILE = "manifest.json"

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


def gallery_files(video_ids: Sequence[str], objects: np.ndarray, events: np.ndarray) -> dict[str, bytes]:
    """The data files of one gallery version (everything but model.py and similarity.onnx)."""
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
        TENSORS_FILE: safetensors_bytes(tensors, {"format": "prost-gallery", "videos": str(len(ids))}),
        IDS_FILE: (json.dumps({"video_ids": ids}, ensure_ascii=False) + "\n").encode(),
    }


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories of a model, ascending (Triton ignores other names and those starting with 0)."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def write_version(model_dir: Path, files: dict[str, bytes | Path], minimum: int = 1) -> int:
    """Write `files` (bytes, or paths to copy) as the next version of `model_dir` (at least `minimum`), atomically:
    Triton never sees a half-written version."""
    model_dir = Path(model_dir)
    version = max((versions(model_dir) or [0])[-1] + 1, minimum)
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    staging.mkdir(parents=True)
    for name, data in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, target)
        else:
            target.write_bytes(data)
    staging.rename(model_dir / str(version))
    return version


def remove_version(model_dir: Path, version: int) -> None:
    shutil.rmtree(Path(model_dir) / str(version), ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_model_dir(model_dir: Path) -> dict:
    """Manifest entry of one model: its versions and the sha256 of every file, keyed by relative POSIX path."""
    model_dir = Path(model_dir)
    numeric = versions(model_dir)
    files = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        top = rel.parts[0]
        if path.is_file() and "__pycache__" not in rel.parts and (top == "config.pbtxt" or top in map(str, numeric)):
            files[rel.as_posix()] = sha256_file(path)
    return {"versions": numeric, "latest": numeric[-1] if numeric else None, "files": files}


def update_manifest(repository: Path, model: str) -> None:
    """Refresh one model's entry in `<repository>/manifest.json` (written by `prost repository build`)."""
    path = Path(repository) / MANIFEST_FILE
    manifest = json.loads(path.read_text()) if path.exists() else {"models": {}}
    manifest.setdefault("models", {})[model] = describe_model_dir(Path(repository) / model)
    tmp = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
