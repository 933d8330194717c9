"""The gallery version format shared by the client, the repository writer and the `prost_gallery` model.

A version directory `prost_gallery/<N>/` holds:
  model.py              the tiny MODEL_SOURCE below (the implementation is installed on the server)
  similarity.onnx       the exported pairwise similarity graph; the repository's copy takes the fp16 prototypes
  gallery.safetensors   "objects" fp16 [N, L, No, D] and "events" fp16 [N, Ne, D]; its metadata names the video
                        encoder that produced them (ENCODER_STAMP)
  video_ids.json        {"video_ids": [N strings]}, row i of the tensors belongs to video_ids[i]
Torch-free and prost-free: the client writes galleries with numpy and the standard library only.

Concurrency: every writer of a model directory (`prost repository build`, `prost-client index`, ProstClient
publishing) holds an exclusive `fcntl.flock` on `<model_dir>/.lock` from reading the latest version to renaming the
new one into place, so two writers never pick the same number and a rebuild never copies a gallery that is being
replaced. `manifest.json` read-modify-writes hold `<repository>/.lock`. Lock order: a model's lock, then the
repository's, never the reverse. flock locks belong to an open file, so they also exclude threads of one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prost_client.errors import ClientError

MODEL_FILE = "model.py"
SIMILARITY_FILE = "similarity.onnx"
TENSORS_FILE = "gallery.safetensors"
IDS_FILE = "video_ids.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"  # Triton ignores names that are not numeric version directories
ENCODER_STAMP = "video_encoder_sha256"  # safetensors metadata key of the gallery's video encoder
LOCK_TIMEOUT = 600.0  # seconds a writer waits for another one (a publisher holds it through a gallery load)

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
    """The `__metadata__` of a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= 100_000_000:  # the format's own header limit
            raise ClientError(f"{path} is not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClientError(f"{path}: unreadable safetensors header ({exc})") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ClientError(f"{path}: the safetensors header is not a JSON object with a __metadata__ object")
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


class DirectoryLock:
    """Exclusive `fcntl.flock` on `<directory>/.lock`; not reentrant (a second acquire in one process waits too).

    `try_acquire` never blocks, so asyncio code can poll it between awaits; `with DirectoryLock(d):` waits up to
    `timeout` seconds and raises ClientError naming the directory when another writer keeps it.
    """

    def __init__(self, directory: Path, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.timeout = timeout
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            raise ClientError(f"{self.path} is already held by this lock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def busy_error(self) -> ClientError:
        return ClientError(f"{self.path.parent} is locked by another writer (`prost repository build`, "
                           f"`prost-client index`) for more than {self.timeout:.0f} s; retry when it has finished "
                           f"(lock file {self.path})")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file releases the flock

    def __enter__(self) -> DirectoryLock:
        deadline = time.monotonic() + self.timeout
        while not self.try_acquire():
            if time.monotonic() > deadline:
                raise self.busy_error()
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_version(model_dir: Path, files: dict[str, bytes | Path], minimum: int = 1, *, locked: bool = False) -> int:
    """Write `files` (bytes, or paths to copy) as the next version of `model_dir` (at least `minimum`), atomically:
    Triton never sees a half-written version. Takes the model's lock unless the caller holds it (`locked=True`)."""
    model_dir = Path(model_dir)
    with contextlib.nullcontext() if locked else DirectoryLock(model_dir):
        version = max((versions(model_dir) or [0])[-1] + 1, minimum)
        target = model_dir / str(version)
        if target.exists():  # a stray file, or a writer that ignores the lock (rename would replace an empty dir)
            raise ClientError(f"cannot write version {version} of {model_dir}: {target} already exists")
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
        try:
            for name, data in files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, Path):
                    shutil.copyfile(data, path)
                else:
                    path.write_bytes(data)
                _fsync(path)
            staging.chmod(0o755)  # mkdtemp creates it 0700; the server may run as another user
            _fsync(staging)
            staging.rename(target)
            _fsync(model_dir)  # a crash after this leaves the whole version or none of it
        except OSError as exc:
            raise ClientError(f"cannot write version {version} of {model_dir}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; removes leftovers on failure
    return version


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_version(repository: Path, model: str, files: dict[str, bytes], minimum: int) -> int:
    """Write a new gallery version into a local repository, with model.py and similarity.onnx from the latest one,
    and list it in the manifest. The caller holds the model's lock.

    `minimum` is above every version the server knows (an upload may have set one, a failed load may have left
    one): Triton's response cache is keyed by version, so a number is never reused for different content.
    """
    model_dir = Path(repository) / model
    existing = versions(model_dir)
    if not existing:
        raise ClientError(f"{model_dir} has no version directory; build it with `prost repository build`")
    latest = model_dir / str(existing[-1])
    for name in (MODEL_FILE, SIMILARITY_FILE):
        if not (latest / name).is_file():
            raise ClientError(f"{latest / name} is missing; rebuild the repository with `prost repository build`")
    files = {**files, **{name: (latest / name).read_bytes() for name in (MODEL_FILE, SIMILARITY_FILE)}}
    read_manifest(repository)  # refuse before writing a version that could not be listed
    version = write_version(model_dir, files, minimum=minimum, locked=True)
    try:
        update_manifest(repository, model)
    except ClientError:  # an unlisted version would load at the next server start
        shutil.rmtree(model_dir / str(version), ignore_errors=True)
        raise
    return version


def unstage_version(repository: Path | None, model: str, version: int) -> None:
    """Remove a version that definitely failed to load, so the repository matches what is served (no-op without
    a repository). The caller holds the model's lock."""
    if repository is not None:
        shutil.rmtree(Path(repository) / model / str(version), ignore_errors=True)
        update_manifest(repository, model)


def prune_versions(repository: Path, model: str, keep: int) -> None:
    """Remove all but the newest `keep` version directories (Triton serves only the latest) and refresh the manifest.
    The caller holds the model's lock."""
    for version in versions(Path(repository) / model)[:-keep]:
        shutil.rmtree(Path(repository) / model / str(version), ignore_errors=True)
    update_manifest(repository, model)


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
    """Refresh one model's entry in `<repository>/manifest.json` (written by `prost repository build`).

    The caller holds the model's lock, so the entry (hashed before taking the repository's lock, which stays short)
    is still current when written; the repository's lock keeps concurrent updates of different entries.
    """
    entry = describe_model_dir(Path(repository) / model)
    with DirectoryLock(repository):
        manifest = read_manifest(repository)
        manifest.setdefault("models", {})[model] = entry
        write_manifest(repository, manifest, locked=True)


def read_manifest(repository: Path) -> dict:
    """`<repository>/manifest.json`, or an empty one when there is none yet."""
    path = Path(repository) / MANIFEST_FILE
    if not path.exists():
        return {"models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}; `prost repository build` rewrites it") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models", {}), dict):
        raise ClientError(f"{path} is not a repository manifest; `prost repository build` rewrites it")
    return manifest


def write_manifest(repository: Path, manifest: dict, *, locked: bool = False) -> None:
    """Replace `<repository>/manifest.json` atomically (under the repository's lock unless `locked`)."""
    with contextlib.nullcontext() if locked else DirectoryLock(repository):
        path = Path(repository) / MANIFEST_FILE
        tmp = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise ClientError(f"cannot write {path}: {exc}") from exc
