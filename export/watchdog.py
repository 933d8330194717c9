"""`prost serve`'s stub watchdog: reloads a python model whose backend stub process died.

Triton's python backend does not restart a killed stub (the OOM killer, a crash in native code): the model stays READY
in every health check while each request to it fails with "Stub process '<instance>' is not healthy", until the model
is loaded again (measured with tritonserver 2.51: never recovers on its own; a reload serves again in about 1.5 s).

A stub is identified by (model, version, instance) from its command line. One that disappears while the repository
index still lists that version READY has died: versions being swapped or unloaded are no longer READY when their stubs
exit. The model is then reloaded under its directory lock, so a publisher loading a new version (which restarts the
stub anyway) is never raced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from prost_client.gallery import DirectoryLock

log = logging.getLogger(__name__)

StubKey = tuple[str, str, str]  # model, version, instance


def live_stubs(server_pid: int, proc: Path = Path("/proc")) -> dict[StubKey, int]:
    """{(model, version, instance): pid} of the live (not zombie) python-backend stubs that `server_pid` started."""
    stubs = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):  # gone meanwhile, or not readable
            continue
        if int(ppid) != server_pid or state == "Z" or not args[0].endswith("triton_python_backend_stub"):
            continue
        model_py = Path(args[1])  # <repository>/<model>/<version>/model.py
        model, version = model_py.parent.parent.name, model_py.parent.name
        instance = next((a for a in args[2:] if a.startswith(f"{model}_")), None)
        if instance is not None:
            stubs[model, version, instance] = int(entry.name)
    return stubs


class StubWatchdog:
    """Create it once every model is ready, then call `check()` every few seconds while the server runs."""

    def __init__(self, server_pid: int, repository: Path, ready_versions: Callable[[], set[tuple[str, str]] | None],
                 load: Callable[[str], None], *, confirm: int = 2, backoff: float = 60.0,
                 proc: Path = Path("/proc")) -> None:
        """
        Args:
            server_pid: the tritonserver process.
            repository: its model repository (for the model-directory locks).
            ready_versions: {(model, version)} READY in the repository index, None when the server does not answer.
            load: reloads a model (Triton's load API).
            confirm: checks a stub must stay gone before its model is reloaded.
            backoff: seconds before the same model is reloaded again.
            proc: the proc filesystem.
        """
        self.server_pid, self.repository = server_pid, Path(repository)
        self.ready_versions, self.load = ready_versions, load
        self.confirm, self.backoff, self.proc = confirm, backoff, proc
        # Every stub seen alive, from now on: consecutive checks it has been gone.
        self.missing: dict[StubKey, int] = dict.fromkeys(live_stubs(server_pid, proc), 0)
        self.reloaded_at: dict[str, float] = {}

    def check(self) -> list[str]:
        """Reload the models whose stub died; returns their names."""
        alive = live_stubs(self.server_pid, self.proc)
        self.missing = {key: 0 if key in alive else count + 1
                        for key, count in {**dict.fromkeys(alive, 0), **self.missing}.items()}
        gone = [key for key, count in self.missing.items() if count >= self.confirm]
        if not gone:
            return []
        ready = self.ready_versions()
        if ready is None:
            return []
        for key in gone:
            if key[:2] not in ready:  # swapped or unloaded on purpose
                del self.missing[key]
        reloaded = []
        for model in sorted({key[0] for key in gone if key in self.missing}):
            if time.monotonic() - self.reloaded_at.get(model, -self.backoff) < self.backoff:
                continue
            lock = DirectoryLock(self.repository / model)
            if not lock.try_acquire():  # a publisher is loading a new version: that restarts the stub
                continue
            started = time.monotonic()
            try:
                dead = sorted(instance for m, _, instance in gone if m == model)
                log.warning("python-backend stub %s of %s died; reloading %s", ", ".join(dead), model, model)
                self.load(model)
            finally:
                lock.release()
            log.warning("reloaded %s in %.1f s", model, time.monotonic() - started)
            self.reloaded_at[model] = time.monotonic()
            reloaded.append(model)
            for key in [k for k in gone if k[0] == model]:  # its new stubs are tracked when they come up
                del self.missing[key]
        return reloaded
