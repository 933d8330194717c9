"""The stub watchdog's decisions on a fake /proc: a dead stub of a READY version is reloaded, once, under the model's
lock; stubs of versions swapped or unloaded on purpose are not."""

from __future__ import annotations

import shutil
from pathlib import Path

from prost_client.gallery import DirectoryLock
from prost_export.watchdog import StubWatchdog, live_stubs

SERVER = 100


def add_process(proc: Path, pid: int, args: list[str], ppid: int = SERVER, state: str = "S") -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} (some name) {state} {ppid} {pid} 0\n")
    (proc / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")


def add_stub(proc: Path, pid: int, model: str, version: int, **kwargs) -> None:
    add_process(proc, pid, ["/x/backends/python/triton_python_backend_stub", f"/repo/{model}/{version}/model.py",
                            "shm_region", "1048576", "1048576", str(SERVER), "/x/backends/python", "336",
                            f"{model}_0_0", "DEFAULT"], **kwargs)


def test_live_stubs_are_the_servers_own_and_not_zombies(tmp_path):
    add_stub(tmp_path, 101, "prost_gallery", 3)
    add_stub(tmp_path, 102, "prost_text", 1, state="Z")
    add_stub(tmp_path, 103, "prost_text", 1, ppid=999)  # another server's
    add_process(tmp_path, 104, ["/usr/bin/python", "/repo/prost_text/1/model.py"])
    assert live_stubs(SERVER, tmp_path) == {("prost_gallery", "3", "prost_gallery_0_0"): 101}


def test_only_a_dead_stub_of_a_ready_version_is_reloaded(tmp_path):
    proc, repo = tmp_path / "proc", tmp_path / "repo"
    proc.mkdir()
    add_stub(proc, 101, "prost_gallery", 1)
    add_stub(proc, 102, "prost_text", 1)
    ready = {("prost_gallery", "1"), ("prost_text", "1")}
    loads = []
    watchdog = StubWatchdog(SERVER, repo, lambda: set(ready), loads.append, confirm=2, proc=proc)

    add_stub(proc, 103, "prost_gallery", 2)  # a publisher swaps version 1 for version 2
    shutil.rmtree(proc / "101")
    ready = {("prost_gallery", "2"), ("prost_text", "1")}
    shutil.rmtree(proc / "102")  # the text stub is killed; its version stays READY
    assert watchdog.check() == [] and loads == []  # gone once: not yet confirmed
    with DirectoryLock(repo / "prost_text"):  # a publisher holds the model: its load restarts the stub
        assert watchdog.check() == [] and loads == []
    assert watchdog.check() == ["prost_text"] and loads == ["prost_text"]
    for _ in range(3):  # the reloaded stub is not up yet (or never comes back): no reload loop
        assert watchdog.check() == []
    assert loads == ["prost_text"]
