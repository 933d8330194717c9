"""Reduced-precision encoder graphs for CPUs (`prost export --precision int8`), each gated against the fp32 export.

int8: ONNX Runtime's dynamic quantisation of the CLIP towers' MLP GEMMs (int8 weights per output channel, uint8
activations quantised per call, VNNI kernels where the CPU has them); attention, LayerNorm, softmax, the prototype
heads and the decoders stay in float. bf16: ONNX Runtime's CPU provider has no bf16 MatMul (1.32), so it is
refused, saying so. The graphs are written beside the fp32 ones as `<graph>.<precision>.onnx` and listed in
the manifest's "precisions" with their gate, which `prost repository build --precision` requires.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from prost.config import ProstConfig
from prost.errors import DependencyError, ExportError
from prost.fileio import sha256_file, write_json_atomic
from prost_export.graphs import example_inputs
from prost_export.manifest import MANIFEST, read_manifest
from prost_export.parity import Backend, ParityReport, check_backend_retrieval, compare, onnx_backend
from prost_export.specs import GraphSpec, graph_specs

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "bf16")
ENCODERS = ("video_prototypes", "text_prototypes")  # the similarity graph has no weights: it stays fp32
MIN_COSINE = 0.99  # per prototype vector, against the fp32 graph
RECALL_POINTS = 0.5  # with --data: text-to-video R@k within this many points of fp32
GATE_BATCH = 4
QUANTIZED_OPS = ("MatMul", "Gemm")
# Only the MLPs of the CLIP towers' blocks are quantised (two thirds of a block's weight FLOPs). Measured on the
# trained tiny model: quantising every block GEMM too moved 1 of 39 test captions' top-1 result (max |dS| 7e-3
# against a median top-1 margin of 1.9e-2); the MLPs alone moved none (max |dS| 2e-3).
QUANTIZED_PARTS = ("/mlp/c_fc/", "/mlp/c_proj/")


def precision_file(spec: GraphSpec, precision: str) -> str:
    """File name of a graph at a precision: the fp32 graph keeps its name."""
    return spec.onnx_file if precision == "fp32" else f"{spec.name}.{precision}.onnx"


def bf16_problem() -> str | None:
    """Why ONNX Runtime's CPU provider cannot run a bf16 graph here, or None when it can (a one-MatMul probe)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.BFLOAT16, shape)  # noqa: E731
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "probe",
                              [value("a", [2, 2]), value("b", [2, 2])], [value("c", [2, 2])])
    try:
        ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own NOT_IMPLEMENTED type
        reason = str(exc).split(":")[-1].strip()
        return (f"ONNX Runtime {ort.__version__}'s CPU provider cannot run bf16 graphs ({reason}); no bf16 graphs "
                f"written. On CPUs use --precision int8; bf16 scoring is in prost.similarity")
    return None


@contextlib.contextmanager
def _root_logger_at_warning() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a line per tensor on the root logger at INFO: hold it at WARNING meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation, per output channel, of the CLIP towers' MLP GEMMs of `source` into `target`."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise DependencyError("onnxruntime.quantization is missing; install prost-serve[cpu]") from exc
    with _root_logger_at_warning(), tempfile.TemporaryDirectory(prefix="prost-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False)
        kept = [n.name for n in graph.graph.node
                if n.op_type in QUANTIZED_OPS and not any(part in n.name for part in QUANTIZED_PARTS)]
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                         per_channel=True, nodes_to_exclude=kept, extra_options={"MatMulConstBOnly": True})


def reduced_backend(export_dir: Path, config: ProstConfig, precision: str) -> Backend:
    """ONNX Runtime over the encoders at `precision` and the fp32 similarity graph."""
    return onnx_backend(export_dir, config,
                        lambda spec: precision_file(spec, precision if spec.name in ENCODERS else "fp32"))


def check_precision(export_dir: Path, config: ProstConfig, precision: str, data_dir: Path | None = None,
                    split: str = "test", max_videos: int = 200) -> dict:
    """The gate: every prototype's cosine to the fp32 graph's >= MIN_COSINE on random inputs, and with `data_dir`
    text-to-video R@1/5/10 on decoded videos and captions within RECALL_POINTS of fp32. Raises ParityError."""
    specs = graph_specs(config)
    reference, reduced = onnx_backend(export_dir, config), reduced_backend(export_dir, config, precision)
    report = ParityReport()
    for name in ENCODERS:
        inputs = example_inputs(specs[name], batch=GATE_BATCH, seed=4321)
        compare(reference(name, inputs), reduced(name, inputs), atol=None, min_cosine=MIN_COSINE, report=report)
    gate: dict = {"min_cosine": {r.name: round(r.min_cosine, 6) for r in report.rows}, "bound": MIN_COSINE}
    if data_dir is not None:
        metrics = check_backend_retrieval(export_dir, config, data_dir, reduced, RECALL_POINTS, batch=8, split=split,
                                          max_videos=max_videos)
        gate["retrieval"] = {"fp32": metrics["onnxruntime"], precision: metrics["candidate"],
                             "bound_points": RECALL_POINTS, "split": split}
    return gate


def export_precision(export_dir: str | Path, precision: str, data_dir: Path | None = None, split: str = "test",
                     max_videos: int = 200) -> dict | None:
    """Write the encoders at `precision` beside an export, gate them, and list them in its manifest; returns the
    gate's figures, or None when this ONNX Runtime cannot run that precision (logged)."""
    export_dir = Path(export_dir)
    if precision not in PRECISIONS[1:]:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    manifest = read_manifest(export_dir)
    if precision == "bf16":
        problem = bf16_problem()
        if problem:
            log.warning("%s", problem)
            return None
        raise ExportError("this ONNX Runtime runs bf16 graphs, but this exporter writes int8 graphs only; use "
                          "--precision int8")
    config = ProstConfig.from_dict(manifest["config"])
    specs = graph_specs(config)
    files = {}
    for name in ENCODERS:
        target = export_dir / precision_file(specs[name], precision)
        log.info("quantising %s to %s", specs[name].onnx_file, target.name)
        quantize_int8(export_dir / specs[name].onnx_file, target)
        files[name] = target.name
    try:
        gate = check_precision(export_dir, config, precision, data_dir, split, max_videos)
    except Exception:
        for name in files.values():  # nothing ungated stays, nor a manifest entry of an earlier gate for it
            (export_dir / name).unlink(missing_ok=True)
            manifest["files"].pop(name, None)
        manifest.get("precisions", {}).pop(precision, None)
        write_json_atomic(export_dir / MANIFEST, manifest)
        raise
    manifest.setdefault("precisions", {})[precision] = {"graphs": files, "gate": gate}
    for name in files.values():
        path = export_dir / name
        manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_json_atomic(export_dir / MANIFEST, manifest)  # only after the gate passed
    return gate


def served_file(manifest: dict, spec: GraphSpec, precision: str) -> str:
    """The export file a repository serves for a graph at `precision`; ExportError when the export lacks it."""
    if precision == "fp32" or spec.name not in ENCODERS:
        return spec.onnx_file
    listed = manifest.get("precisions", {}).get(precision)
    if not listed:
        raise ExportError(f"the export has no gated {precision} graphs; run `prost export --precision {precision}` on "
                          f"it first")
    return listed["graphs"][spec.name]

