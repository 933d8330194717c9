"""Helpers shared by the python-backend models: config parameters, error responses, ONNX Runtime sessions.

Imported inside Triton's python stub (where `triton_python_backend_utils` exists) and nowhere else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from prost_model_repository.compat import numpy_problem


class ParameterError(ValueError):
    """A config `parameters` entry is missing or invalid; raised in `initialize`, so the model does not load."""


if numpy_problem(np.__version__):  # every model imports this module first: none loads, each saying why
    raise ImportError(numpy_problem(np.__version__))


def model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def version_dir(args: dict) -> Path:
    """`<model repository>/<model>/<version>`: where this version's files are."""
    return Path(args["model_repository"]) / str(args["model_version"])


def parameters(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def param(params: dict[str, str], key: str, default: str | None = None) -> str:
    if key in params and params[key] != "":
        return params[key]
    if default is None:
        raise ParameterError(f"config parameter {key!r} is required; given: {', '.join(sorted(params)) or 'none'}")
    return default


def param_int(params: dict[str, str], key: str, default: int | None = None, minimum: int = 0) -> int:
    raw = param(params, key, None if default is None else str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"config parameter {key}={raw!r} is not an integer") from None
    if value < minimum:
        raise ParameterError(f"config parameter {key}={value} must be >= {minimum}")
    return value


def param_float(params: dict[str, str], key: str, default: float | None = None) -> float:
    raw = param(params, key, None if default is None else repr(default))
    try:
        return float(raw)
    except ValueError:
        raise ParameterError(f"config parameter {key}={raw!r} is not a number") from None


def param_optional_float(params: dict[str, str], key: str, minimum: float | None = None) -> float | None:
    """A required number, or "none" for None (e.g. SAMPLE_FPS: none keeps every frame)."""
    raw = param(params, key)
    if raw.strip().lower() == "none":
        return None
    value = param_float(params, key)
    if minimum is not None and not value > minimum:
        raise ParameterError(f"config parameter {key}={value} must be > {minimum} (or none)")
    return value


def io_config(config: dict, name: str) -> dict:
    """The config entry of input or output `name`."""
    for entry in (*config.get("input", []), *config.get("output", [])):
        if entry["name"] == name:
            return entry
    raise ParameterError(f"the model config has no tensor {name!r}")


def dims(config: dict, name: str) -> list[int]:
    return [int(d) for d in io_config(config, name)["dims"]]


def invalid(message: str):
    """A per-request INVALID_ARGUMENT response (the other requests of the batch still succeed)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def internal(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def decode_strings(tensor: np.ndarray, name: str) -> list[str]:
    """UTF-8 strings of a TYPE_STRING tensor [B, 1]; ValueError names the bad item."""
    out = []
    for i, item in enumerate(tensor.reshape(-1)):
        try:
            out.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}[{i}] is not valid UTF-8: {exc}") from None
    return out


def ort_session(path: Path, intra_op_threads: int = 0, inter_op_threads: int = 0):
    """A CPU ONNX Runtime session with explicit providers and no silent fallback."""
    import onnxruntime as ort

    if not path.is_file():
        raise ParameterError(f"ONNX file {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    session.disable_fallback()
    return session
