"""What a newcomer types wrong: each mistake ends in one line on stderr that names the path or flag and the reason,
a non-zero exit and no traceback, and, where it can be known, before any work is done. Also: every command and
flag explains itself in --help."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from prost_cli.main import build_parser
from prost_client import protocol as P
from prost_client.cli import build_parser as build_client_parser
from prost_model_repository import storage
from prost_model_repository.server import free_port
from prost_model_repository.writer import write_repository

PROST = [sys.executable, "-m", "prost_cli.main"]
CLIENT = [sys.executable, "-m", "prost_client.cli"]


def fails(command: list[str], *needles: str, env: dict | None = None) -> str:
    """Run a CLI; it must exit non-zero with one line on stderr holding every needle, and no traceback."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PROST_REPOSITORY_KEY": "", **(env or {})})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_text("not a folder\n")
    return path


def test_outputs_that_cannot_be_written_are_refused_before_the_work(a_file, onnx_dir, tmp_path, tiny_model):
    import prost

    run = prost.save_model(tiny_model, tmp_path / "run")
    under_file = a_file / "out"
    fails(PROST + ["export", "--checkpoint", str(run), "--out", str(under_file)], str(under_file), "is a file")
    fails(PROST + ["eval", "--checkpoint", str(run), "--data", str(tmp_path / "no-data"), "--out",
                   str(under_file / "r.json")], "is a file")
    fails(PROST + ["data", "synth", "--out", str(under_file)], "is a file")
    fails(PROST + ["repository", "build", "--export", str(onnx_dir), "--out", str(a_file)], str(a_file), "folder")
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    if os.access(readonly, os.W_OK):
        pytest.skip("root ignores permissions; the file cases above cover the check")
    fails(PROST + ["export", "--checkpoint", str(run), "--out", str(readonly / "x")], "not writable")


def test_an_existing_output_file_may_be_replaced(tmp_path):
    from prost.fileio import check_writable

    result = tmp_path / "r.json"
    result.write_text("{}\n")
    assert check_writable(result, folder=False) == result  # `prost eval --out r.json` run twice


def test_damaged_inputs_get_one_line(tmp_path, tiny_model, onnx_dir):
    import prost

    run = prost.save_model(tiny_model, tmp_path / "run")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fails(PROST + ["eval", "--checkpoint", str(run), "--data", str(tmp_path)], "model.safetensors", "truncated")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(4096))
    line = fails(PROST + ["eval", "--checkpoint", str(noise), "--data", str(tmp_path)], "noise.bin", "weights-only")
    assert "weights_only=False" not in line and "will likely succeed" not in line
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text('{"files": ')
    fails(PROST + ["repository", "build", "--export", str(export), "--out", str(tmp_path / "repo")],
          "manifest.json", "prost export")
    assert not (tmp_path / "repo").exists()


def test_a_weights_file_uses_the_config_beside_it_or_is_refused(tmp_path, tiny_model):
    import prost
    from prost.errors import CheckpointError

    config = tiny_model.config.replace(beta=0.25)  # a value no preset guesses
    run = prost.save_model(prost.create_model(config, seed=0), tmp_path / "run")
    assert prost.load_model(run / "model.safetensors").config == config
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="without config.json beside it"):
        prost.load_model(lone / "model.safetensors")
    fails(PROST + ["eval", "--checkpoint", str(lone / "model.safetensors"), "--data", str(tmp_path)],
          "without config.json")


def test_wrong_folders_are_refused(tmp_path, onnx_dir, a_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(PROST + ["serve", "--repository", str(empty)], str(empty), "not a model repository")
    fails(PROST + ["serve", "--repository", str(onnx_dir)], "is an export directory", "prost repository build")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    fails(PROST + ["repository", "build", "--export", str(onnx_dir), "--out", str(busy)], "not empty")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    fails(PROST + ["repository", "build", "--export", str(onnx_dir), "--out", str(tmp_path / "trt"), "--variant",
                   "tensorrt"], "loads only in the TensorRT version that built it", "--build-on-target")
    fails(PROST + ["repository", "build", "--export", str(onnx_dir), "--out", str(tmp_path / "trt"), "--variant",
                   "tensorrt", "--tensorrt-version", "any"], "no TensorRT plan")
    assert not (tmp_path / "trt").exists()
    manifest = (onnx_dir / "manifest.json").read_text()
    fails(PROST + ["repository", "build", "--export", str(onnx_dir), "--out", str(onnx_dir)], "is an export directory")
    assert (onnx_dir / "manifest.json").read_text() == manifest  # the export is untouched


def test_exporting_over_an_export_says_so(tmp_path, tiny_model):
    import prost

    run = prost.save_model(tiny_model, tmp_path / "run")
    out = tmp_path / "export"
    for _ in range(2):
        result = subprocess.run(PROST + ["export", "--checkpoint", str(run), "--out", str(out), "--no-parity"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "holds an export; overwriting it" in result.stderr


def test_a_port_in_use_is_named_and_nothing_is_left_behind(model_repository, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fails(PROST + ["serve", "--repository", str(model_repository), "--grpc-port", str(port), "--log-dir",
                       str(tmp_path / "logs")], f"port {port} is in use (gRPC)", "--grpc-port")
        fails(PROST + ["serve", "--repository", str(model_repository), "--metrics-port", str(port), "--grpc-port",
                       str(free_port()), "--http-port", str(free_port())], f"port {port} is in use (metrics)")
    fails(PROST + ["serve", "--repository", str(model_repository), "--host", "no-such-host.invalid"],
          "cannot resolve --host no-such-host.invalid")
    assert not (tmp_path / "logs").exists()


def test_the_client_names_the_address_and_the_url_form():
    port = free_port()
    line = fails(CLIENT + ["search", "a red circle", "--url", f"127.0.0.1:{port}"],  # global option after the verb
                 f"no server at 127.0.0.1:{port}", "prost serve --repository", "--url")
    assert P.TOKENIZER_MODEL not in line and P.ENCODE_TEXT_MODEL not in line
    fails(CLIENT + ["--url", "http://127.0.0.1:8001", "search", "x"], "host:port", "without a scheme")


def test_publishing_checks_key_and_repository_before_encoding(triton_server, model_repository, onnx_dir,
                                                              synthetic_videos, tmp_path):
    videos = synthetic_videos[0].parent
    url = ["--url", triton_server.url]
    index = CLIENT + url + ["index", str(videos), "--no-progress", "--repository", str(model_repository)]
    assert not (model_repository / storage.KEY_FILE).exists()
    missing = fails(index, "none was given", "--repository-key")
    wrong = fails(index + ["--repository-key", "wrong"], "refused the repository key")
    assert missing != wrong
    other = write_repository(onnx_dir, tmp_path / "other")
    storage.write_key(other, "the key of another server")
    before = sorted(p.name for p in (other / P.GALLERY_MODEL).iterdir())
    for key in ([], ["--repository-key", triton_server.repository_key]):  # the folder is named first, key or not
        fails(CLIENT + url + ["index", str(videos), "--no-progress", "--repository", str(other), *key], str(other),
              "is not the repository the server")
    assert sorted(p.name for p in (other / P.GALLERY_MODEL).iterdir()) == before  # nothing left behind
    key_file = storage.write_key(model_repository, triton_server.repository_key)  # as `prost serve` does
    try:
        result = subprocess.run(CLIENT + url + ["index", str(videos), "--no-progress", "--repository",
                                                str(model_repository)],
                                capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                                  "PROST_REPOSITORY_KEY": ""})
        assert result.returncode == 0, result.stderr
        assert f"published {P.GALLERY_MODEL} version" in result.stdout
    finally:
        key_file.unlink()
    assert json.loads((model_repository / storage.MANIFEST_FILE).read_text())["id"]


def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, (*path, name))


@pytest.mark.parametrize("root", [build_parser, build_client_parser], ids=["prost", "prost-client"])
def test_every_command_and_flag_explains_itself(root):
    seen = 0
    for path, parser in subparsers(root(), (root().prog,)):
        assert parser.description, f"{' '.join(path)} has no description"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            seen += 1
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{' '.join(path)} {name} has no help"
            if action.option_strings and not (action.default is None or action.default is False
                                              or action.default == argparse.SUPPRESS):
                assert "default" in action.help, f"{' '.join(path)} {name} does not show its default"
    assert seen > 20
