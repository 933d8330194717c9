"""File writes that readers never see half done, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from prost.errors import PathError


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any], *, durable: bool = False,
                 mode: int = 0o644) -> None:
    """Write `data` (bytes, text, or a function that writes to a binary file) to `path` through a temporary
    sibling and a rename; the file gets `mode` (before the umask) from its creation. With `durable`, the file and its
    directory are fsynced, so a crash keeps one of the two."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode), "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> None:
    """`write_atomic` of indented JSON with a trailing newline."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: str | Path, *, folder: bool, flag: str = "--out") -> Path:
    """Refuse, before any work and without creating anything, an output that cannot be written: a file where a folder
    is needed (or the reverse), a parent that is a file, or a location without write permission."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise PathError(f"{flag} {path} is a {'file' if folder else 'folder'}; pass a {'folder' if folder else 'file'}")
    if path.exists():  # a file is replaced through a temporary sibling, so its folder must be writable
        target = path if folder else path.absolute().parent
    else:
        target = next(p for p in path.absolute().parents if p.exists())
    if not target.is_dir():
        raise PathError(f"{flag} {path}: {target} is a file, so nothing can be created under it")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: {target} is not writable")
    return path


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (files written once and never modified can be shared between versions), or
    copy it, durably, where the filesystem cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        fsync_path(target)
