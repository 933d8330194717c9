"""The README's first-hour commands, run as written (on a smaller dataset and a few training steps) against a real
`prost serve`: the README and what works cannot drift apart."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from prost_model_repository.server import free_ports

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent  # the `prost` and `prost-client` entry points of this environment
# What makes the flow small enough for the suite; each must match its README line (checked).
SMALLER = {"--videos 3000": "--videos 24", "--max-minutes 9.5": "--max-steps 4 --batch-size 8 --no-progress",
           "--data data/synth\n": "--data data/synth --max-videos 8\n"}


def first_hour_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- first-hour -->\n```\n(.*?)```", text, re.S)
    assert block, "README.md lost its first-hour block"
    commands = block.group(1)
    for long, short in SMALLER.items():
        assert long in commands, f"the README no longer says {long.strip()!r}; update SMALLER"
        commands = commands.replace(long, short)
    return [line for line in commands.splitlines() if line.strip()]


def test_the_first_hour_runs_as_written(tmp_path):
    commands = first_hour_commands()
    assert [c.split()[0] for c in commands].count("prost-client") >= 4
    grpc, http, metrics = free_ports(3)
    env = {**os.environ, "PROST_URL": f"127.0.0.1:{grpc}", "PROST_REPOSITORY_KEY": ""}
    server, server_log = None, tmp_path / "serve.log"
    try:
        for command in commands:
            argv = shlex.split(command.removesuffix("&"))
            argv[0] = str(BIN / argv[0])
            if command.endswith("&"):  # the server, on free ports; the clients find it through PROST_URL
                argv += ["--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)]
                with open(server_log, "w") as log:
                    server = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=log)
                continue
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}\n{server_log.read_text()[-2000:]}"
            if argv[1] == "search":
                assert "5 result(s)" in result.stdout and re.search(r"\n +1 +-?\d", result.stdout), result.stdout
            if argv[1] == "score":
                assert "00000-base.mp4" in result.stdout, result.stdout
        assert (tmp_path / "repo" / ".repository-key").stat().st_mode & 0o077 == 0
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert server is not None and server.returncode == 0, server_log.read_text()[-2000:]
    assert not (tmp_path / "repo" / ".repository-key").exists()  # removed when the server stops
