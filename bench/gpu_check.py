"""GPU check: engines for the tiny and vit-b-32 presets (random weights), their gates, and a throughput table.

Run through scripts/gpu_check.sh on a machine with torch, onnxruntime-gpu and tensorrt. Throughput is reported
beside PyTorch eager measured in the same run. Every figure runs from host memory to host memory (input copied to the
GPU, outputs back), as a server sees it; eager and ONNX Runtime run fp32, TensorRT the requested precision.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

import prost
from prost_export.graphs import example_inputs
from prost_export.onnx import export_onnx
from prost_export.parity import onnx_session, run_onnx
from prost_export.specs import graph_specs
from prost_export.tensorrt import EngineRunner, Profile, build_engines

ORT_PROVIDER = next((p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()))
if os.environ.get("PROST_REQUIRE_GPU") == "1" and ORT_PROVIDER != "CUDAExecutionProvider":
    raise SystemExit(f"ONNX Runtime {onnxruntime.__version__} has no CUDAExecutionProvider: install onnxruntime-gpu "
                     f"instead of onnxruntime (the ORT column would measure the CPU)")


def throughput(fn, items: int, repeats: int = 5) -> float:
    """Items per second of fn() after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return items * repeats / (time.perf_counter() - started)


def check_preset(preset: str, work: Path, batch: int, precision: str) -> list[tuple]:
    model = prost.create_model(preset, seed=0)
    out = export_onnx(model, work / preset, parity_batches=(1,))
    engines = build_engines(out, precision=precision, profile=Profile(1, batch, batch))
    gpu_model = model.cuda().eval()
    rows = []
    for graph, tower in (("text_prototypes", "texts"), ("video_prototypes", "videos")):
        spec = graph_specs(model.config)[graph]
        feeds = example_inputs(spec, batch=batch, seed=1)
        host = torch.from_numpy(next(iter(feeds.values())))
        encode = gpu_model.encode_text if graph == "text_prototypes" else gpu_model.encode_video
        session = onnx_session(out / spec.onnx_file, [ORT_PROVIDER])
        runner = EngineRunner(out / engines[graph]["file"], engines[graph])
        with torch.no_grad():
            eager = throughput(lambda: [t.cpu() for t in encode(host.cuda())], batch)
        ort = throughput(lambda: run_onnx(session, feeds), batch)
        trt = throughput(lambda: runner(feeds), batch)
        ran = session.get_providers()[0]  # the provider that actually ran, not the one asked for
        rows.append((preset, tower, eager, ort, ran.replace("ExecutionProvider", ""), trt))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in ("tiny", "vit-b-32"):
            rows += check_preset(preset, Path(work), args.batch, args.precision)
    trt_column = f"TRT {args.precision}/s"
    print(f"{'preset':10} {'items':7} {'eager fp32/s':>12} {'ORT fp32/s':>10} {'ORT EP':>6} {trt_column:>12} "
          f"{'TRT/eager':>9}")
    for preset, items, eager, ort, ep, trt in rows:
        print(f"{preset:10} {items:7} {eager:12.1f} {ort:10.1f} {ep:>6} {trt:12.1f} {trt / eager:9.2f}")


if __name__ == "__main__":
    main()
