"""The stub watchdog's decisions on a fake /proc: a dead stub of a READY version is reloaded under the model's lock
(its lock file touched, so Triton does reload), and checked to be back; stubs of versions swapped or unloaded on
purpose are not; a reload that does not bring the stub back is retried after the backoff, not in a loop; a stub stuck
in a request or stopped past the request timeout is killed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from prost_model_repository.storage import DirectoryLock
from prost_model_repository.watchdog import Stub, StubWatchdog, live_stubs

SERVER = 100


def add_process(proc: Path, pid: int, args: list[str], ppid: int = SERVER, state: str = "S") -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} (some name) {state} {ppid} {pid} 0\n")
    (proc / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")


def add_stub(proc: Path, pid: int, model: str, version: int, root: str = "/repo", **kwargs) -> None:
    add_process(proc, pid, ["/x/backends/python/triton_python_backend_stub", f"{root}/{model}/{version}/model.py",
                            "triton_python_backend_shm_region_1f2e", "1048576", "1048576", str(SERVER),
                            "/x/backends/python", "336", f"{model}_0_0", "DEFAULT"], **kwargs)


def test_live_stubs_are_the_servers_own_and_not_zombies(tmp_path):
    add_stub(tmp_path, 101, "prost_gallery", 3)
    add_stub(tmp_path, 102, "prost_text", 1, state="Z")
    add_stub(tmp_path, 103, "prost_text", 1, ppid=999)  # another server's
    add_process(tmp_path, 104, ["/usr/bin/python", "/repo/prost_text/1/model.py"])
    add_process(tmp_path, 105, ["/x/triton_python_backend_stub", "/tmp/folderXy/2/model.py", "shm", "1", "1",
                                str(SERVER), "/x", "336", "prost_gallery_0_0", "DEFAULT"])  # an uploaded version
    assert live_stubs(SERVER, tmp_path) == {
        ("prost_gallery", "3", "prost_gallery_0_0"): Stub(101, Path("/repo/prost_gallery/3/model.py")),
        ("prost_gallery", "2", "prost_gallery_0_0"): Stub(105, Path("/tmp/folderXy/2/model.py"))}


def test_only_a_dead_stub_of_a_ready_version_is_reloaded(tmp_path, caplog):
    proc, repo = tmp_path / "proc", tmp_path / "repo"
    proc.mkdir()
    add_stub(proc, 101, "prost_gallery", 1, root=str(repo))
    add_stub(proc, 102, "prost_text", 1, root=str(repo))
    ready = {("prost_gallery", "1"), ("prost_text", "1")}
    loads = []

    def load(model: str) -> None:  # Triton's reload starts a new stub, unless told not to
        loads.append(model)
        if revive:
            add_stub(proc, 200 + len(loads), model, 1, root=str(repo))

    watchdog = StubWatchdog(SERVER, repo, lambda: set(ready), load, confirm=2, backoff=0.2, proc=proc)
    add_stub(proc, 103, "prost_gallery", 2, root=str(repo))  # a publisher swaps version 1 for version 2
    shutil.rmtree(proc / "101")
    ready = {("prost_gallery", "2"), ("prost_text", "1")}
    shutil.rmtree(proc / "102")  # the text stub is killed; its version stays READY
    revive = True
    assert watchdog.check() == [] and loads == []  # gone once: not yet confirmed
    with DirectoryLock(repo / "prost_text"):  # a publisher holds the model: its load restarts the stub
        assert watchdog.check() == [] and loads == []
    os.utime(repo / "prost_text" / ".lock", (0, 0))
    assert watchdog.check() == ["prost_text"] and loads == ["prost_text"]
    assert (repo / "prost_text" / ".lock").stat().st_mtime > 0  # touched before the load: Triton does reload
    for _ in range(3):
        assert watchdog.check() == []

    shutil.rmtree(proc / "201")  # it dies again, and this time the reload does not bring it back
    revive = False
    assert watchdog.check() == [] and watchdog.check() == [] and loads == ["prost_text"]  # within the backoff
    time.sleep(watchdog.backoff)
    with caplog.at_level(logging.ERROR, logger="prost_model_repository.watchdog"):
        assert watchdog.check() == [] and loads == ["prost_text"] * 2
    assert "prost_text has no live stub after the reload" in caplog.text
    assert watchdog.check() == [] and loads == ["prost_text"] * 2  # not again before the backoff
    time.sleep(watchdog.backoff)
    revive = True
    assert watchdog.check() == ["prost_text"] and loads == ["prost_text"] * 3


def test_a_stub_stuck_in_a_request_or_stopped_past_the_timeout_is_killed_then_reloaded(tmp_path, caplog):
    """Real processes stand in for stubs (the fake /proc names their pids): one busy past the timeout and one stopped
    past it are killed and their models reloaded at once, within another reload's backoff; one busy within the
    timeout, and one without a mark, live on."""
    proc, repo, busy = tmp_path / "proc", tmp_path / "repo", tmp_path / "busy"
    proc.mkdir(), busy.mkdir()
    sleepers = {model: subprocess.Popen(["sleep", "60"]) for model in ("stuck", "stopped", "slow", "idle")}
    try:
        for model, child in sleepers.items():
            add_stub(proc, child.pid, model, 1, root=str(repo), state="T" if model == "stopped" else "S")
        (busy / str(sleepers["stuck"].pid)).touch()
        os.utime(busy / str(sleepers["stuck"].pid), (time.time() - 10, time.time() - 10))
        loads = []

        def load(model: str) -> None:  # the reload starts a new, idle stub (never signalled: it has no mark)
            loads.append(model)
            add_stub(proc, 300 + len(loads), model, 1, root=str(repo))

        watchdog = StubWatchdog(SERVER, repo, lambda: {(m, "1") for m in sleepers}, load, confirm=1,
                                backoff=600.0, busy_dir=busy, request_timeout=0.5, proc=proc)
        watchdog.reloaded_at["stuck"] = time.monotonic()  # a recent reload's backoff does not delay this one
        with caplog.at_level(logging.ERROR, logger="prost_model_repository.watchdog"):
            assert watchdog.check() == []  # the stopped one is seen stopped from now on
            time.sleep(0.6)
            (busy / str(sleepers["slow"].pid)).touch()  # a request that began just now
            assert watchdog.check() == []
        for model in ("stuck", "stopped"):
            assert sleepers[model].wait(5) == -signal.SIGKILL
            shutil.rmtree(proc / str(sleepers[model].pid))  # as /proc forgets a reaped process
        assert sleepers["slow"].poll() is None and sleepers["idle"].poll() is None
        assert "stuck_0_0 of stuck has been in one request for 10 s, past the request timeout (0.5 s)" in caplog.text
        assert "stub stopped_0_0 of stopped has been stopped for 1 s" in caplog.text
        assert watchdog.check() == ["stopped", "stuck"] and sorted(loads) == ["stopped", "stuck"]
        assert not (busy / str(sleepers["stuck"].pid)).exists()  # a dead stub's mark goes with it
    finally:
        for child in sleepers.values():
            child.kill()
            child.wait()
