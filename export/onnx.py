"""`prost export`: three ONNX graphs (video prototypes, text prototypes, similarity), hygiene checks and a manifest.

Exporter mode is pinned to the TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset 17, whose
`dynamic_axes` give a dynamic batch dimension and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from prost.checkpoint import load_model
from prost.errors import ExportError
from prost.fileio import check_writable
from prost.model.prost import ProstModel
from prost_export.graphs import EncoderGraph, SimilarityGraph, example_inputs
from prost_export.manifest import MANIFEST, OPSET, write_manifest
from prost_export.parity import check_dataset_parity, check_random_parity
from prost_export.precision import PRECISIONS, export_precision
from prost_export.specs import GraphSpec, graph_specs
from prost_export.trt_ops import TENSORRT_ONNX_OPS

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 2_000_000_000  # protobuf's 2 GB limit, with margin


def export_graph(module: nn.Module, spec: GraphSpec, path: Path, opset: int = OPSET,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES) -> Path:
    """Export one module under a GraphSpec's names and dynamic axes, then check its hygiene.

    Graphs larger than `external_data_bytes` keep their weights in `<file>.data` beside the graph (ONNX external data).
    """
    module.eval()  # a fresh wrapper is in training mode, and the exporter restores that mode on the model after
    args = tuple(torch.from_numpy(v) for v in example_inputs(spec, batch=2, videos=3).values())
    dynamic_axes = {t.name: t.dynamic_axes for t in (*spec.inputs, *spec.outputs) if t.dynamic_axes}
    with torch.no_grad(), warnings.catch_warnings():
        # The only Python conditions in forward are input-shape checks on static dimensions.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(path), input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs], dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    graph = onnx.load(str(path))
    _declare_output_shapes(graph, spec)
    if graph.ByteSize() > external_data_bytes:
        onnx.save_model(graph, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save_model(graph, str(path))
    check_graph(path, spec)
    return path


def _declare_output_shapes(graph: onnx.ModelProto, spec: GraphSpec) -> None:
    """Replace the exporter's generated output dim names with the spec's static sizes (checked by check_graph)."""
    for tensor, out in zip(graph.graph.output, spec.outputs):
        for dim, size in zip(tensor.type.tensor_type.shape.dim, out.shape):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def check_graph(path: Path, spec: GraphSpec) -> None:
    """onnx.checker (full), every static output dim inferable from the graph itself, only TensorRT-supported ops."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)  # inference needs no weights; protos stay under 2 GB
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")  # infer the output shapes afresh instead of reading back ours
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True).graph
    for out, tensor in zip(spec.outputs, graph.output):
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.type.tensor_type.shape.dim)
        expected = tuple(None if isinstance(d, str) else d for d in out.shape)  # dynamic dims: any symbol
        if tensor.name != out.name or dims != expected:
            raise ExportError(f"{path.name}: output {tensor.name} has shape {dims}, expected {out.name} {out.shape}")
    unsupported = sorted({n.op_type for n in graph.node} - TENSORRT_ONNX_OPS)
    if unsupported:
        raise ExportError(f"{path.name} uses ops outside TensorRT 10's ONNX support: {', '.join(unsupported)}")


def check_frame_mask(path: Path, model: ProstModel) -> None:
    """The frame decoder's mask must be a folded constant of the graph, equal to the model's."""
    expected = model.frame_decoder.mask.numpy()
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = [*graph.initializer, *(a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute)]
    for tensor in constants:
        if tuple(tensor.dims) == expected.shape and np.array_equal(onnx.numpy_helper.to_array(tensor), expected):
            return
    raise ExportError(f"{path.name}: the frame-decoder mask {expected.shape} is not a constant of the graph")


def export_onnx(model: ProstModel, out_dir: str | Path, *, checkpoint: str | Path | None = None,
                parity: bool = True, parity_batches: tuple[int, ...] = (1, 3)) -> Path:
    """Write video_prototypes.onnx, text_prototypes.onnx, similarity.onnx and manifest.json into `out_dir`.

    With `parity` (the default) the ONNX Runtime outputs are checked against PyTorch on fresh random inputs at each
    of `parity_batches`; the export fails with a report of the worst tensor, and writes the manifest only after the
    gate passed.
    """
    out = check_writable(out_dir, folder=True)
    if (out / MANIFEST).is_file():
        log.warning("%s holds an export; overwriting it", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a directory without a manifest is not a (valid) export
    model = model.eval()
    specs = graph_specs(model.config)
    modules = {"video_prototypes": EncoderGraph(model, "video"), "text_prototypes": EncoderGraph(model, "text"),
               "similarity": SimilarityGraph()}
    for name, spec in specs.items():
        log.info("exporting %s", spec.onnx_file)
        export_graph(modules[name], spec, out / spec.onnx_file)
    check_frame_mask(out / specs["video_prototypes"].onnx_file, model)
    if parity:
        for batch in parity_batches:  # sizes other than the traced ones (2 texts, 3 videos) prove the dynamic axes
            report = check_random_parity(model, out, batch=batch)
            log.info("parity gate passed at batch %d: %s", batch, report.summary())
    write_manifest(model, out, specs, checkpoint)
    return out


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a checkpoint to ONNX graphs with a parity gate")
    parser.add_argument("--checkpoint", required=True, help="any checkpoint prost.load_model accepts")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--data", help="synthetic or captions.jsonl dataset for the ranking parity gate")
    parser.add_argument("--split", default="test", help="split of --data used by the ranking gate")
    parser.add_argument("--max-videos", type=int, default=200, help="videos of --data used by the ranking gate")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity gate (not recommended)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="also write the encoders at this precision for CPUs (int8: ONNX Runtime dynamic "
                             "quantisation), gated at cosine >= 0.99 per prototype and, with --data, R@k within 0.5 "
                             "points of fp32; serve them with `prost repository build --precision`")
    parser.set_defaults(func=_export_cmd)


def _export_cmd(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    out = export_onnx(model, args.out, checkpoint=args.checkpoint, parity=not args.no_parity)
    if args.data and not args.no_parity:
        report = check_dataset_parity(model, out, Path(args.data), args.split, args.max_videos)
        print(f"ranking gate passed: {report.summary()}")
    if args.precision != "fp32":
        gate = export_precision(out, args.precision, Path(args.data) if args.data else None, args.split,
                                args.max_videos)
        print(f"{args.precision} gate passed: {gate}" if gate else f"no {args.precision} graphs (see the warning)")
    print(f"wrote {out}")
    return 0
