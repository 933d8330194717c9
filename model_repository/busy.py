"""Busy marks: how `prost serve --request-timeout` sees a request stuck inside a python model.

While a python model's `execute` runs, the file `$PROST_BUSY_DIR/<stub pid>` exists and its mtime is when the call
began; the stub watchdog kills a stub whose mark is older than the timeout, and its model is then reloaded like any
model whose stub died. Without PROST_BUSY_DIR (tritonserver started by other means) nothing is written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

BUSY_DIR_ENV = "PROST_BUSY_DIR"


def marks_busy(execute: Callable) -> Callable:
    """Decorate `TritonPythonModel.execute` so each call is marked busy in $PROST_BUSY_DIR while it runs."""
    directory = os.environ.get(BUSY_DIR_ENV)
    if not directory:
        return execute

    @functools.wraps(execute)
    def marked(self, requests):
        path = Path(directory) / str(os.getpid())
        with contextlib.suppress(OSError):  # best effort: a missing folder or a full disk never fails a request
            path.touch()  # one execute at a time per stub: the mtime is this call's start
        try:
            return execute(self, requests)
        finally:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    return marked


def busy_seconds(directory: Path, pid: int) -> float | None:
    """How long stub `pid` has been inside one execute call, or None when it is idle."""
    try:
        return time.time() - (directory / str(pid)).stat().st_mtime
    except FileNotFoundError:
        return None
