"""The Docker images without a Docker engine: the serving entrypoint's refusal and flags, and pins that match
pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from prost_client.protocol import REPOSITORY_KEY_HEADER

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "triton-entrypoint.sh"


def _run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The entrypoint with a `tritonserver` on PATH that prints the arguments it was given, one per line."""
    (tmp_path / "tritonserver").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (tmp_path / "tritonserver").chmod(0o755)
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


def test_serving_image_refuses_to_start_without_a_repository_key(tmp_path):
    result = _run_entrypoint(tmp_path, {})
    assert result.returncode == 2 and result.stdout == ""
    assert "set PROST_REPOSITORY_KEY" in result.stderr


def test_serving_image_restricts_the_repository_endpoints_to_its_key(tmp_path):
    result = _run_entrypoint(tmp_path, {"PROST_REPOSITORY_KEY": "s3cret"}, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    restriction = f"model-repository:{REPOSITORY_KEY_HEADER}=s3cret"
    assert f"--grpc-restricted-protocol={restriction}" in args
    assert f"--http-restricted-api={restriction}" in args
    assert {"--model-repository=/models", "--model-control-mode=explicit", "--load-model=*"} <= set(args)
    assert args[-1] == "--log-verbose=1"


def _pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[a-z]+\])?==([^"]+)"', text)}


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "export.Dockerfile"])
def test_image_pins_match_pyproject(dockerfile):
    """Every package an image pins has pyproject's version (onnxruntime-gpu: the `gpu` extra's)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = _pins(" ".join(f'"{d}"' for d in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]))
    pinned = _pins((ROOT / "docker" / dockerfile).read_text())
    assert pinned and {name: expected.get(name) for name in pinned} == pinned


def test_export_image_installs_every_dependency_prost_imports():
    """`prost` imports every command module at start, so the export image needs all of pyproject's dependencies
    except those the NGC PyTorch image brings (torch, numpy) and the CPU-only ones it replaces or does not serve."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    provided = {"torch", "numpy", "onnxruntime", "nvidia-pytriton"}  # onnxruntime: onnxruntime-gpu instead
    needed = set(_pins(" ".join(f'"{d}"' for d in project["dependencies"]))) - provided
    pinned = _pins((ROOT / "docker" / "export.Dockerfile").read_text())
    assert needed <= set(pinned), sorted(needed - set(pinned))
    assert "onnxruntime-gpu" in pinned
