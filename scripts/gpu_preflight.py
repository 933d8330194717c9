"""Preflight of scripts/gpu_check.sh: names every missing piece of the GPU path and exits 1, so a machine without
a GPU fails loudly instead of passing by skipping. Run with the environment's python."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

from prost_cli.main import extras_conflict

TRITON_TENSORRT_BACKEND = Path("/opt/tritonserver/backends/tensorrt")


def failures() -> list[str]:
    """What the GPU check needs and this machine lacks, one sentence each."""
    found = []
    if importlib.util.find_spec("tensorrt") is None:
        found.append("tensorrt is not importable: `pip install -e '.[gpu,dev]'` (TensorRT 10.16 Python bindings)")
    import torch

    if not torch.cuda.is_available():
        found.append(f"CUDA is not available to torch {torch.__version__} (no GPU, no driver, or a CPU-only build)")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        found.append(f"ONNX Runtime {onnxruntime.__version__} has no CUDAExecutionProvider (providers: "
                     f"{', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu instead of "
                     f"onnxruntime")
    conflict = extras_conflict()
    if conflict:
        found.append(conflict)
    return found


def triton_with_tensorrt() -> bool:
    """Whether a tritonserver with the TensorRT backend is on PATH (inside the NGC Triton image)."""
    return shutil.which("tritonserver") is not None and TRITON_TENSORRT_BACKEND.is_dir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triton", action="store_true",
                        help="only say (exit 0 or 1) whether a tritonserver with the TensorRT backend is on PATH")
    if parser.parse_args().triton:
        return 0 if triton_with_tensorrt() else 1
    problems = failures()
    for problem in problems:
        print(f"gpu preflight: FAILED: {problem}", file=sys.stderr)
    if problems:
        print(f"gpu preflight: {len(problems)} problem(s); the GPU check did not run", file=sys.stderr)
        return 1
    print("gpu preflight: tensorrt, CUDA and ONNX Runtime's CUDA provider are present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
