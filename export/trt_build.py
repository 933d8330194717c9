"""The TensorRT plan builder, torch-free: `prost build-engines` uses it, and so does the serving image, which builds
its plans at start with its own TensorRT (prost_model_repository.plans) and has no torch.

fp16 plans keep LayerNorm, softmax and reductions (with the element-wise layers around each reduction) in fp32 under
OBEY_PRECISION_CONSTRAINTS, and the engine inspector checks that every pinned layer still outputs fp32.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from prost.errors import DependencyError, ExportError
from prost_export.specs import arch_tag

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)


def tensorrt_module() -> ModuleType:
    """The tensorrt module; DependencyError naming the fix when it is not installed."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DependencyError(
            "TensorRT is not installed: run on a GPU host with `pip install 'prost-serve[gpu]'` "
            "(the CPU install serves the ONNX graphs with ONNX Runtime instead)"
        ) from exc
    return trt


def timing_cache_name(compute_capability: str, tensorrt_version: str, cuda_version: str) -> str:
    """`timing.sm<cc>.trt<version>.cuda<version>.cache`: timings hold for one GPU architecture, TensorRT and CUDA."""
    return f"timing.{arch_tag(compute_capability)}.trt{tensorrt_version}.cuda{cuda_version}.cache"


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """A timing cache for `config` (a TensorRT IBuilderConfig) from `path`, set on it; a file that does not
    deserialise, or that another TensorRT or GPU made, is discarded with a warning and the build starts empty."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises or returns None for a corrupt cache
        log.debug("create_timing_cache: %s", exc)
        cache = None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s is damaged or was made by another TensorRT or GPU; building without it", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def fp16_pinned_layers(engine_information: str, pinned: set[str]) -> list[str]:
    """Engine layers that compute a layer pinned to fp32 yet output fp16, from the inspector's JSON
    (`get_engine_information(LayerInformationFormat.JSON)` of an engine built with DETAILED profiling verbosity).

    A fused layer is named after the network layers it holds, joined by " + "; a Myelin region
    ("{ForeignNode[first...last]}") lists only its first and last, so a pin inside a region is checked only when
    it is one of those two."""
    try:
        layers = json.loads(engine_information)["Layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"cannot read the engine inspector's layer information ({exc}); was the engine built "
                          f"with ProfilingVerbosity.DETAILED?") from None
    found = []
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY gives bare names: nothing to check
            raise ExportError("the engine inspector gave layer names only; build with ProfilingVerbosity.DETAILED")
        name = str(layer.get("Name", ""))
        parts = {p.strip() for p in name.removeprefix("{ForeignNode[").removesuffix("]}").replace("...", " + ")
                 .split(" + ")}
        if parts & pinned and any(_is_fp16(out.get("Format/Datatype", "")) for out in layer.get("Outputs", [])):
            found.append(name)
    return found


def _is_fp16(datatype: str) -> bool:
    return "FP16" in datatype or "Half" in datatype


def build_plan(onnx_path: Path, plan_path: Path, shapes: Shapes, *, precision: str = "fp32",
               timing_cache: Path | None = None, workspace_gib: float = 4.0) -> float:
    """Parse one ONNX graph, build its engine with one optimisation profile (`shapes`), write the serialized plan
    to `plan_path` and the timing cache back; returns the build's seconds. ExportError says what failed."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    trt = tensorrt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    optimization = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        optimization.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization)
    pinned: set[str] = set()
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS"):  # weak typing: deprecated 10.12, gone in 11
            raise ExportError(f"TensorRT {trt.__version__} has no weakly typed fp16 build (removed in TensorRT 11), "
                              f"which this exporter uses; install the pinned 10.x (`pip install 'prost-serve[gpu]'`) "
                              f"or build with --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _keep_fp32(network, trt)
        log.info("%s: %d normalisation/softmax/reduce layers kept in fp32", onnx_path.name, len(pinned))
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector check below needs it
    load_timing_cache(config, timing_cache)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    if pinned:
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if engine is None:
            raise ExportError(f"TensorRT cannot deserialize the engine it built for {onnx_path.name}")
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        dropped = fp16_pinned_layers(info, pinned)
        if dropped:
            raise ExportError(f"{onnx_path.name}: layers pinned to fp32 run in fp16 despite "
                              f"OBEY_PRECISION_CONSTRAINTS: {'; '.join(dropped[:5])}; build with --precision fp32")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return round(time.perf_counter() - started, 1)


def _keep_fp32(network: Any, trt: ModuleType) -> set[str]:
    """Pin LayerNorm, softmax and reductions to fp32 under OBEY_PRECISION_CONSTRAINTS, with the element-wise and
    unary layers around each reduction: the L2 norm parses as square -> reduce -> sqrt, and the unnormalised SPG
    prototypes (sums over all tokens) overflow fp16 when squared."""
    anchors = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    neighbours = {trt.LayerType.ELEMENTWISE, trt.LayerType.UNARY}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(j).name: layer for layer in layers for j in range(layer.num_outputs)}
    consumers: dict[str, list] = {}
    for layer in layers:
        for j in range(layer.num_inputs):
            if layer.get_input(j) is not None:
                consumers.setdefault(layer.get_input(j).name, []).append(layer)
    pinned = {}
    for layer in layers:
        if layer.type not in anchors:
            continue
        pinned[layer.name] = layer
        if layer.type == trt.LayerType.REDUCE:
            around = [producer.get(layer.get_input(j).name) for j in range(layer.num_inputs)]
            around += [c for j in range(layer.num_outputs) for c in consumers.get(layer.get_output(j).name, [])]
            pinned.update({n.name: n for n in around if n is not None and n.type in neighbours})
    for layer in pinned.values():
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
    return set(pinned)
