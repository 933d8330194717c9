"""`prost serve`'s stub watchdog: reloads a python model whose backend stub process died.

Triton's python backend does not restart a killed stub (the OOM killer, a crash in native code): the model stays READY
in every health check while each request to it fails with "Stub process '<instance>' is not healthy", until the model
is loaded again (measured with tritonserver 2.51: never recovers on its own; a reload serves again in about 1.5 s).
Triton reloads a loaded model only when a file in its directory is newer than at the last load, so the watchdog
touches the model's lock file first.

A stub is identified by (model, version, instance): the instance name is `<model>_<group>_<index>`, the version the
directory of the `model.py` it runs. One that disappears while the repository index still lists that version READY has
died: versions being swapped or unloaded are no longer READY when their stubs exit. The model is then reloaded under
its directory lock, so a publisher loading a new version (which restarts the stub anyway) is never raced. A version
that was uploaded (Triton runs it from a temporary directory) comes back as the repository's latest version: uploads
are not durable, and a working older gallery beats a dead one.

With a request timeout, a stub stuck inside one request (its busy mark, prost_model_repository.busy, older than the
timeout) or stopped (SIGSTOP) for that long is killed, and then reloaded as a dead one: the stuck request and those
queued behind it fail with the python backend's "not healthy" error, which ProstClient retries within its deadline,
instead of holding the model forever (a reload alone never finishes: Triton waits for the stuck request first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from prost_model_repository.busy import busy_seconds
from prost_model_repository.storage import DirectoryLock

log = logging.getLogger(__name__)

StubKey = tuple[str, str, str]  # model, version, instance
_INSTANCE = re.compile(r"(.+)_\d+_\d+")


class Stub(NamedTuple):
    pid: int
    model_py: Path  # <repository>/<model>/<version>/model.py, or Triton's temporary directory for an upload
    state: str = "S"  # /proc/<pid>/stat's: R running, S sleeping, T stopped, ...


def live_stubs(server_pid: int, proc: Path = Path("/proc")) -> dict[StubKey, Stub]:
    """The live (not zombie) python-backend stubs that `server_pid` started, by (model, version, instance)."""
    stubs = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):  # gone meanwhile, or not readable
            continue
        if ppid != str(server_pid) or state == "Z" or not args[0].endswith("triton_python_backend_stub"):
            continue
        instance = next((a for a in reversed(args[2:]) if _INSTANCE.fullmatch(a)), None)
        if instance is not None:
            model_py = Path(args[1])
            key = (_INSTANCE.fullmatch(instance)[1], model_py.parent.name, instance)
            stubs[key] = Stub(int(entry.name), model_py, state)
    return stubs


class StubWatchdog:
    """Create it once every model is ready, then call `check()` every few seconds while the server runs."""

    def __init__(self, server_pid: int, repository: Path, ready_versions: Callable[[], set[tuple[str, str]] | None],
                 load: Callable[[str], None], *, confirm: int = 2, backoff: float = 60.0,
                 busy_dir: Path | None = None, request_timeout: float = 0.0, proc: Path = Path("/proc")) -> None:
        """
        Args:
            server_pid: the tritonserver process.
            repository: its model repository (for the model-directory locks).
            ready_versions: {(model, version)} READY in the repository index, None when the server does not answer.
            load: reloads a model (Triton's load API).
            confirm: checks a stub must stay gone before its model is reloaded.
            backoff: seconds between two reloads of one model (a stub that dies at once is not reloaded in a loop).
            busy_dir: where the stubs mark themselves busy (PROST_BUSY_DIR), for the request timeout.
            request_timeout: seconds a stub may spend in one request, or stopped, before it is killed (0: no limit).
            proc: the proc filesystem.
        """
        self.server_pid, self.repository = server_pid, Path(repository).resolve()
        self.ready_versions, self.load = ready_versions, load
        self.confirm, self.backoff, self.proc = confirm, backoff, proc
        self.busy_dir, self.request_timeout = busy_dir, request_timeout
        self.stopped_since: dict[int, float] = {}  # pid -> when it was first seen stopped
        self.killed: set[int] = set()  # pids killed for the timeout: their reload skips the backoff
        # Every stub seen alive, from now on, and the consecutive checks it has been gone.
        self.seen: dict[StubKey, Stub] = live_stubs(server_pid, proc)
        self.missing: dict[StubKey, int] = dict.fromkeys(self.seen, 0)
        self.reloaded_at: dict[str, float] = {}

    def check(self) -> list[str]:
        """Reload the models whose stub died; returns their names."""
        alive = live_stubs(self.server_pid, self.proc)
        if self.request_timeout > 0:
            self._kill_stuck(alive)
        self.seen.update(alive)
        self.missing = {key: 0 if key in alive else self.missing.get(key, 0) + 1 for key in self.seen}
        gone = [key for key, count in self.missing.items() if count >= self.confirm]
        ready = self.ready_versions() if gone else None
        if ready is None:
            return []
        for key in gone:
            if key[:2] not in ready:  # swapped or unloaded on purpose
                self._forget(key)
        return [model for model in sorted({key[0] for key in gone if key in self.seen}) if self._reload(model)]

    def _kill_stuck(self, alive: dict[StubKey, Stub]) -> None:
        """SIGKILL each stub busy in one request, or stopped, for longer than the request timeout."""
        now = time.monotonic()
        self.stopped_since = {stub.pid: self.stopped_since.get(stub.pid, now) for stub in alive.values()
                              if stub.state == "T"}
        if self.busy_dir is not None:  # marks of stubs gone meanwhile must not be read as a new owner's of the pid
            pids = {str(stub.pid) for stub in alive.values()}
            for mark in self.busy_dir.glob("[0-9]*"):
                if mark.name not in pids:
                    mark.unlink(missing_ok=True)
        for key, stub in alive.items():
            busy = busy_seconds(self.busy_dir, stub.pid) if self.busy_dir is not None else None
            stuck = max(busy or 0.0, now - self.stopped_since.get(stub.pid, now))
            if stuck > self.request_timeout:
                log.error("python-backend stub %s of %s has been %s for %.0f s, past the request timeout (%g s); "
                          "killing it (its requests fail and are retried by clients; the model is reloaded)",
                          key[2], key[0], "stopped" if stub.state == "T" else "in one request", stuck,
                          self.request_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)
                self.killed.add(stub.pid)

    def _reload(self, model: str) -> bool:
        """Reload `model` unless it was reloaded within the backoff (a stub killed for the request timeout is
        reloaded regardless: each such cycle takes the timeout) or a publisher holds its lock."""
        dead = {key: self.seen[key] for key in self.seen if key[0] == model and self.missing[key] >= self.confirm}
        timed_out = any(stub.pid in self.killed for stub in dead.values())
        if not timed_out and time.monotonic() - self.reloaded_at.get(model, -self.backoff) < self.backoff:
            return False
        lock = DirectoryLock(self.repository / model)
        if not lock.try_acquire():  # a publisher is loading a new version: that restarts the stub
            return False
        self.reloaded_at[model] = started = time.monotonic()
        try:
            log.warning("python-backend stub %s of %s died; reloading %s", ", ".join(k[2] for k in dead), model, model)
            if any(not stub.model_py.is_relative_to(self.repository) for stub in dead.values()):
                log.warning("%s was an uploaded version (not durable): the repository's latest version serves "
                            "instead; publish it again", model)
            os.utime(lock.path)  # Triton skips the reload of a model whose files are older than its last load
            self.load(model)
        finally:
            lock.release()
        if not any(key[0] == model for key in live_stubs(self.server_pid, self.proc)):
            log.error("%s has no live stub after the reload; retrying in %.0f s", model, self.backoff)
            self.killed -= {stub.pid for stub in dead.values()}  # the backoff holds from now on
            return False
        log.warning("reloaded %s in %.1f s", model, time.monotonic() - started)
        for key in dead:  # its new stubs are tracked from the next check
            self._forget(key)
        return True

    def _forget(self, key: StubKey) -> None:
        self.killed.discard(self.seen[key].pid)
        del self.seen[key], self.missing[key]
