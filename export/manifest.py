"""The export manifest (`manifest.json`): config, checkpoint, versions, graphs and the sha256 of every file."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import onnx
import torch

from prost.errors import ExportError
from prost.fileio import sha256_file, write_json_atomic
from prost.model.prost import ProstModel
from prost_export.specs import GraphSpec

MANIFEST = "manifest.json"
OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False)"


def write_manifest(model: ProstModel, out: Path, specs: dict[str, GraphSpec], checkpoint: str | Path | None) -> None:
    import onnxruntime

    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(out.iterdir())
             if p.name != MANIFEST and p.is_file() and not p.name.endswith(".plan")}
    manifest = {
        "format": "prost-serve-export/1",
        "config": model.config.to_dict(),
        "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256(Path(checkpoint))} if checkpoint else None,
        "opset": OPSET,
        "exporter": EXPORTER,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "graphs": {name: {"file": s.onnx_file,
                          "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in s.inputs],
                          "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in s.outputs]}
                   for name, s in specs.items()},
        "files": files,
    }
    write_json_atomic(out / MANIFEST, manifest)


def read_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{export_dir} is not an export directory (no {MANIFEST}); run `prost export` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path} ({exc}); run `prost export` again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "config" not in manifest:
        raise ExportError(f"{path} is not an export manifest; run `prost export` again")
    return manifest


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, or of our directory's weights file."""
    return sha256_file(path / "model.safetensors" if path.is_dir() and (path / "model.safetensors").exists() else path)
