"""Gallery-version storage of a Triton model repository: numbered version directories written atomically, the
per-model and repository locks, `manifest.json`, pruning, the server's key file, and the entry to the gallery writer a
local publisher uses. Torch-free (the standard library, small prost modules, and prost.gallery's writer, imported
when a gallery is written), so a client publishing into a local repository can share it.

Concurrency: every writer of a model directory (`prost repository build`, `prost gallery build --repository`,
`prost-client index`, ProstClient publishing) holds an exclusive `fcntl.flock` on `<model_dir>/.lock` while it numbers
and renames a version into place, so two writers never pick the same number and a rebuild never copies a gallery that
is being replaced. Gallery data that depends on no earlier version (a full build) is written in a staging folder
before the lock is taken; an incremental client version is written under it, from the newest version; an
incremental `prost gallery build` is refused at commit when its base is no longer the newest. `manifest.json`
read-modify-writes hold `<repository>/.lock`. Lock order: a model's lock, then the
repository's, never the reverse. flock locks belong to an open file, so they also exclude threads of one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prost.errors import ProstError, RepositoryError
from prost.fileio import fsync_path, link_or_copy, sha256_file, write_atomic, write_json_atomic
from prost_client.gallery_format import MODEL_FILE, SIMILARITY_FILE, versions

MANIFEST_FILE = "manifest.json"
REPOSITORY_FORMAT = "prost-serve-repository/1"  # the manifest's "format"
LOCK_FILE = ".lock"  # Triton ignores names that are not numeric version directories
KEY_FILE = ".repository-key"  # written by `prost serve` (mode 0600): the key a local publisher sends
LOCK_TIMEOUT = 600.0  # seconds a writer waits for another one (a publisher holds it through a gallery load)


class DirectoryLock:
    """Exclusive `fcntl.flock` on `<directory>/.lock`; not reentrant (a second acquire in one process waits too).

    `try_acquire` never blocks, so asyncio code can poll it between awaits; `with DirectoryLock(d):` waits up to
    `timeout` seconds and raises RepositoryError naming the directory when another writer keeps it.
    """

    def __init__(self, directory: Path, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.timeout = timeout
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            raise RepositoryError(f"{self.path} is already held by this lock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def busy_error(self) -> RepositoryError:
        return RepositoryError(f"{self.path.parent} is locked by another writer (`prost repository build`, "
                               f"`prost gallery build`, `prost-client index`, a ProstClient publishing) for more than "
                               f"{self.timeout:.0f} s; retry when it has finished (lock file {self.path})")

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
    """Write `files` (bytes, or paths to hard-link or copy) as the next version of `model_dir` (at least `minimum`),
    atomically: Triton never sees a half-written version. Takes the model's lock unless the caller holds it
    (`locked=True`). Paths are hard-linked where the filesystem allows: version files are never modified in place."""
    model_dir = Path(model_dir)
    with contextlib.nullcontext() if locked else DirectoryLock(model_dir):
        staging = new_staging(model_dir)
        try:
            for name, data in files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, Path):
                    link_or_copy(data, path)
                else:
                    path.write_bytes(data)
                    fsync_path(path)
            return commit_version(model_dir, staging, minimum)
        except OSError as exc:
            raise RepositoryError(f"cannot write a version of {model_dir}: {exc}") from exc
        finally:
            discard_staging(staging)


def commit_version(model_dir: Path, staging: Path, minimum: int = 1) -> int:
    """Rename a complete staging directory (inside `model_dir`) to the next version number (at least `minimum`) and
    return it. The caller holds the model's lock."""
    version = max((versions(model_dir) or [0])[-1] + 1, minimum)
    target = Path(model_dir) / str(version)
    if target.exists():  # a stray file, or a writer that ignores the lock (rename would replace an empty dir)
        raise RepositoryError(f"cannot write version {version} of {model_dir}: {target} already exists")
    try:
        staging.chmod(0o755)  # mkdtemp creates it 0700; the server may run as another user
        for directory in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            fsync_path(directory)  # entries of nested folders (gallery segments) are durable before the rename
        fsync_path(staging)
        staging.rename(target)
        fsync_path(model_dir)  # a crash after this leaves the whole version or none of it
    except OSError as exc:
        raise RepositoryError(f"cannot write version {version} of {model_dir}: {exc}") from exc
    return version


def discard_staging(staging: Path) -> None:
    """Remove a staging directory's leftovers (nothing once it was committed)."""
    shutil.rmtree(staging, ignore_errors=True)


def new_staging(model_dir: Path) -> Path:
    """An empty staging folder inside `model_dir` to write a version into without the model's lock (a build can take
    minutes); Triton ignores it, `commit_gallery` numbers it, `discard_staging` removes what is left."""
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    except OSError as exc:
        raise RepositoryError(f"cannot write into {model_dir}: {exc}") from exc


def write_gallery(staging: Path, model_dir: Path, video_ids: list[str], objects, events, *, video_encoder: str,
                  incremental: bool, remove: Sequence[str], progress: bool) -> None:
    """Write into `staging` the data of the gallery version after the latest in `model_dir`, with the writer of
    `prost gallery build` (`prost.gallery.build.next_version`: full, or incremental from the latest); what a local
    publisher writes. Failures are RepositoryError."""
    from prost.gallery.build import ArrayPrototypes, next_version

    existing = versions(model_dir)
    latest = Path(model_dir) / str(existing[-1]) if existing else None
    try:
        next_version(staging, latest, ArrayPrototypes(video_ids, objects, events), video_encoder=video_encoder,
                     incremental=incremental, remove=remove, progress=progress)
    except ProstError as exc:  # a refusal (unknown id, wrong dims, the bf16 gate) or a missing package, as written
        raise RepositoryError(str(exc)) from exc
    except (OSError, RuntimeError, ImportError) as exc:  # the disk; FAISS's checks; torch for a bf16 gate
        raise RepositoryError(f"cannot write a version of {model_dir}: {exc}") from exc


def commit_gallery(repository: Path, model: str, staging: Path, minimum: int) -> int:
    """Number a complete staging folder (`new_staging`) as the next gallery version, with model.py and
    similarity.onnx hard-linked from the latest version where it has none (a client's), and list it in the
    manifest. The caller holds the model's lock.

    `minimum` is above every version the server knows (an upload may have set one, a failed load may have left
    one): Triton's response cache is keyed by version, so a number is never reused for different content.
    """
    model_dir = Path(repository) / model
    existing = versions(model_dir)
    for name in (MODEL_FILE, SIMILARITY_FILE):
        if (staging / name).exists():
            continue
        if not existing:
            raise RepositoryError(f"{model_dir} has no version directory; build it with `prost repository build`")
        source = model_dir / str(existing[-1]) / name
        if not source.is_file():
            raise RepositoryError(f"{source} is missing; rebuild the repository with `prost repository build`")
        try:
            link_or_copy(source, staging / name)
        except OSError as exc:
            raise RepositoryError(f"cannot write a version of {model_dir}: {exc}") from exc
    read_manifest(repository)  # refuse before writing a version that could not be listed
    version = commit_version(model_dir, staging, max(minimum, version_floor(repository, model)))
    try:
        update_manifest(repository, model)
    except RepositoryError:  # an unlisted version would load at the next server start
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
    is still current when written; the repository's lock keeps concurrent updates of different entries. The
    manifest's "highest" keeps each model's highest version ever listed, so a removed number is not given to
    different content.
    """
    entry = describe_model_dir(Path(repository) / model)
    with DirectoryLock(repository):
        manifest = read_manifest(repository)
        previous = manifest.setdefault("models", {}).get(model, {})
        highest = manifest.setdefault("highest", {})
        highest[model] = max(highest.get(model) or 0, previous.get("latest") or 0, entry["latest"] or 0)
        manifest["models"][model] = entry
        write_manifest(repository, manifest, locked=True)


def version_floor(repository: Path, model: str) -> int:
    """The lowest version number a new version of `model` may take: above every number the manifest has listed
    (Triton's response cache is keyed by version, so a number is never reused for different content)."""
    manifest = read_manifest(repository)
    latest = manifest.get("models", {}).get(model, {}).get("latest") or 0
    return max(manifest.get("highest", {}).get(model) or 0, latest) + 1


def read_manifest(repository: Path) -> dict:
    """`<repository>/manifest.json`, or an empty one when there is none yet."""
    path = Path(repository) / MANIFEST_FILE
    if not path.exists():
        return {"models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"cannot read {path}: {exc}; `prost repository build` rewrites it") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models", {}), dict):
        raise RepositoryError(f"{path} is not a repository manifest; `prost repository build` rewrites it")
    return manifest


def write_manifest(repository: Path, manifest: dict, *, locked: bool = False) -> None:
    """Replace `<repository>/manifest.json` atomically (under the repository's lock unless `locked`)."""
    with contextlib.nullcontext() if locked else DirectoryLock(repository):
        path = Path(repository) / MANIFEST_FILE
        try:
            write_json_atomic(path, manifest, sort_keys=True)
        except OSError as exc:
            raise RepositoryError(f"cannot write {path}: {exc}") from exc


def new_repository_id() -> str:
    """An id for a new repository (kept across its rebuilds), which clients compare with the served one."""
    return secrets.token_hex(8)


def write_key(repository: Path, key: str) -> Path | None:
    """Write the server's repository key into `<repository>/.repository-key`, readable by its owner only (atomically:
    a reader never sees it half written); None when the folder is not writable."""
    path = Path(repository) / KEY_FILE
    try:
        write_atomic(path, key + "\n", mode=0o600)
    except OSError:
        return None
    return path


def read_key(repository: Path) -> str | None:
    """The key `prost serve` wrote into the repository; None without one, RepositoryError when it cannot be read."""
    path = Path(repository) / KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RepositoryError(f"cannot read the server's key file {path} ({exc.strerror}); run as the user that "
                              f"started `prost serve`, or pass --repository-key") from None
