"""Encoder speed on CPU: videos/s and texts/s of PyTorch eager (fp32), ONNX Runtime fp32 and ONNX Runtime int8
(`prost export --precision int8`), each as GFLOP/s (FLOPs counted by torch's FlopCounterMode on the eager model) and
as a fraction of the matching GEMM limit; random weights, random inputs (speed does not depend on their values).

    .venv/bin/python bench/encoders.py [--presets tiny,vit-b-32] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from limits import median_seconds  # noqa: E402

import prost  # noqa: E402
from prost_export.graphs import EncoderGraph, example_inputs  # noqa: E402
from prost_export.onnx import export_onnx  # noqa: E402
from prost_export.parity import onnx_session  # noqa: E402
from prost_export.precision import export_precision, precision_file  # noqa: E402
from prost_export.specs import graph_specs  # noqa: E402

TOWERS = {"video": "video_prototypes", "text": "text_prototypes"}


def eager_flops(module: torch.nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward (matrix products and convolutions, as FlopCounterMode counts them)."""
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: the counter's module tracker hooks autograd
        module(inputs)
    return counter.get_total_flops()


def run(presets: list[str], batches: list[int], limits: dict, work: Path, repeats: int = 3) -> list[dict]:
    """One row per (preset, tower, batch, backend): items/s, GFLOP/s, fraction of the limit, ratio to eager."""
    rows = []
    for preset in presets:
        model = prost.create_model(preset, seed=0).eval()
        export = export_onnx(model, work / preset, parity=False)
        specs = graph_specs(model.config)
        gate = export_precision(export, "int8")["min_cosine"]  # by output tensor
        for kind, graph in TOWERS.items():
            spec = specs[graph]
            module = EncoderGraph(model, kind).eval()
            sessions = {dtype: onnx_session(export / precision_file(spec, dtype)) for dtype in ("fp32", "int8")}
            per_item = eager_flops(module, torch.from_numpy(example_inputs(spec, batch=1)[spec.inputs[0].name]))
            for batch in batches:
                feed = example_inputs(spec, batch=batch, seed=batch)
                tensor = torch.from_numpy(feed[spec.inputs[0].name])

                def eager() -> None:
                    with torch.no_grad():
                        module(tensor)

                backends = {"pytorch eager fp32": (eager, "fp32"),
                            "onnxruntime fp32": (lambda: sessions["fp32"].run(None, feed), "fp32"),
                            "onnxruntime int8": (lambda: sessions["int8"].run(None, feed), "int8")}
                reference = None
                for name, (fn, dtype) in backends.items():
                    seconds = median_seconds(fn, repeats)
                    reference = reference or seconds
                    rate = per_item * batch / seconds / 1e9
                    rows.append({"preset": preset, "tower": kind, "batch": batch, "backend": name,
                                 "items_per_s": round(batch / seconds, 2), "gflops": round(rate, 1),
                                 "fraction_of_limit": round(rate / limits["gemm_gflops"][dtype], 3),
                                 "speedup_vs_eager": round(reference / seconds, 2),
                                 "gflop_per_item": round(per_item / 1e9, 3)})
                    if dtype == "int8":
                        rows[-1]["int8_min_cosine"] = min(gate[t.name] for t in spec.outputs)
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from limits import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,vit-b-32", help="model presets (default tiny,vit-b-32)")
    parser.add_argument("--batches", default="1,8", help="items per call (default 1,8)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prost-bench-enc-") as tmp:
        run(args.presets.split(","), [int(b) for b in args.batches.split(",")], measure(), Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
