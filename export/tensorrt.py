"""`prost build-engines`: TensorRT engines from the exported ONNX graphs, with metadata and parity gates.

Needs an NVIDIA GPU and the `gpu` extra (`pip install 'prost-serve[gpu]'`); without them the command says so and
exits non-zero. fp16 engines keep LayerNorm, softmax and reductions in fp32 (the CLIP text tower is known to break in
plain fp16), with precision constraints obeyed.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prost.config import ProstConfig
from prost.errors import DependencyError, ExportError
from prost.fileio import sha256_file, write_json_atomic
from prost_export.graphs import example_inputs
from prost_export.manifest import MANIFEST, read_manifest
from prost_export.parity import ParityReport, check_backend_retrieval, compare, onnx_session, run_onnx
from prost_export.specs import GraphSpec, arch_tag, graph_specs
from prost_export.trt_build import PRECISIONS, build_plan, tensorrt_module, timing_cache_name

log = logging.getLogger(__name__)

FP16_MIN_COSINE = 0.99
FP16_RECALL_POINTS = 0.5  # R@1/5/10 may move by at most this many points in fp16
FP16_SCORE_ATOL = 1e-2  # similarity scores (cosine sums) in fp16
# The fp16 gate also feeds frames scaled this much: random weights on unit-range inputs never approach fp16's range,
# so a gate on them alone would pass whether or not the pins hold (the trained checkpoint runs with --data).
FP16_STRESS_SCALE = 8.0


def require_tensorrt():
    """The tensorrt module, after checking that a CUDA GPU is visible; DependencyError otherwise."""
    trt = tensorrt_module()
    if not torch.cuda.is_available():
        raise DependencyError("no CUDA GPU is visible: TensorRT engines must be built on the GPU that serves them")
    return trt


@dataclass(frozen=True)
class Profile:
    """Optimization profile over the dynamic dimension(s) of a graph."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


def gpu_identity() -> dict:
    """TensorRT and CUDA versions and the current GPU's name and compute capability: what an engine is tied to."""
    trt = require_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
            "compute_capability": f"{major}.{minor}"}


def plan_name(spec: GraphSpec, compute_capability: str) -> str:
    """`<graph>.sm<cc>.plan`, so one export directory can hold engines for several GPU architectures."""
    return f"{spec.name}.{arch_tag(compute_capability)}.plan"


def _shape(spec_shape: tuple, batch: int) -> tuple[int, ...]:
    return tuple(batch if isinstance(d, str) else d for d in spec_shape)


def build_engine(onnx_path: Path, spec: GraphSpec, plan_path: Path, *, precision: str = "fp32",
                 profile: Profile = Profile(), timing_cache: Path | None = None, workspace_gib: float = 4.0) -> dict:
    """Build one graph's plan (prost_export.trt_build) with `profile` on its dynamic dimensions; returns its metadata
    for the manifest."""
    shapes = {t.name: (_shape(t.shape, profile.min), _shape(t.shape, profile.opt), _shape(t.shape, profile.max))
              for t in spec.inputs}
    seconds = build_plan(onnx_path, plan_path, shapes, precision=precision, timing_cache=timing_cache,
                         workspace_gib=workspace_gib)
    return {**gpu_identity(), "file": plan_path.name, "sha256": sha256_file(plan_path),
            "onnx_sha256": sha256_file(onnx_path), "precision": precision,
            "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max}, "build_seconds": seconds}


def check_engine_compatible(meta: dict) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture, saying how to rebuild."""
    here = gpu_identity()
    if (meta["tensorrt"], meta["compute_capability"]) != (here["tensorrt"], here["compute_capability"]):
        raise ExportError(
            f"engine {meta['file']} was built with TensorRT {meta['tensorrt']} for compute capability "
            f"{meta['compute_capability']} ({meta['gpu']}); this host has TensorRT {here['tensorrt']} on "
            f"{here['compute_capability']} ({here['gpu']}). Rebuild here: prost build-engines --export DIR"
        )


class EngineRunner:
    """Runs a serialized engine on CUDA tensors (torch allocates the buffers; no pycuda needed)."""

    def __init__(self, plan_path: Path, meta: dict) -> None:
        check_engine_compatible(meta)
        trt = require_tensorrt()
        self._trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"cannot deserialize {plan_path}; rebuild with prost build-engines --export DIR")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()  # its own: the legacy default stream adds device synchronisations
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.cuda.stream(self.stream):  # copies, allocations and the engine all on self.stream
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = []
        for name in self.inputs:
            expected = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            if feeds[name].dtype != expected:
                raise ExportError(f"input {name} is {feeds[name].dtype}; the engine takes {expected}")
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ExportError(f"input {name} of shape {list(tensor.shape)} is outside the engine's optimization "
                                  f"profile {self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max)")
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name in self.outputs:
            dtype = torch.float32 if self.engine.get_tensor_dtype(name) == self._trt.float32 else torch.float16
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            results[name] = out
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        outputs = {name: out.float().cpu().numpy() for name, out in results.items()}  # .cpu() waits for the stream
        self.stream.synchronize()
        return outputs


def build_engines(export_dir: Path, *, precision: str = "fp32", profile: Profile = Profile(),
                  timing_cache: Path | None = None, data: Path | None = None) -> dict:
    """Engines for the three graphs of an export directory, gated against ONNX Runtime, recorded in the manifest.

    The manifest's "engines" is keyed by plan file (`<graph>.sm<cc>.plan`), so builds for several GPU architectures
    live side by side; each entry names its graph and the sha256 of the ONNX file it was built from.
    """
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    config = ProstConfig.from_dict(manifest["config"])
    identity = gpu_identity()
    cc = identity["compute_capability"]
    timing_cache = timing_cache or export_dir / timing_cache_name(cc, identity["tensorrt"], identity["cuda"])
    engines = {}
    for name, spec in graph_specs(config).items():
        log.info("building %s (%s, batch %d/%d/%d)", name, precision, profile.min, profile.opt, profile.max)
        meta = build_engine(export_dir / spec.onnx_file, spec, export_dir / plan_name(spec, cc), precision=precision,
                            profile=profile, timing_cache=timing_cache)
        engines[name] = {**meta, "graph": name}
    report = ParityReport()
    for batch in sorted({profile.min, profile.max}):
        check_engine_parity(export_dir, config, engines, precision, batch=batch, report=report)
    if data is not None:
        check_engine_retrieval(export_dir, config, engines, precision, data)
    manifest.setdefault("engines", {}).update({meta["file"]: meta for meta in engines.values()})
    manifest.setdefault("engines_parity", {})[cc] = report.summary()
    write_json_atomic(export_dir / MANIFEST, manifest)
    return engines


def check_engine_parity(export_dir: Path, config: ProstConfig, engines: dict, precision: str, batch: int = 2,
                        report: ParityReport | None = None) -> ParityReport:
    """Engines against ONNX Runtime on random inputs (in fp16 also frames scaled by FP16_STRESS_SCALE): the fp32
    gate, or in fp16 cosine >= 0.99 per prototype and similarity scores within FP16_SCORE_ATOL."""
    report = report or ParityReport()
    for name, spec in graph_specs(config).items():
        session = onnx_session(export_dir / spec.onnx_file)
        runner = EngineRunner(export_dir / engines[name]["file"], engines[name])
        feeds = [example_inputs(spec, batch=batch, seed=4321 + batch)]
        if precision == "fp16" and name == "video_prototypes":
            feeds.append({k: v * np.float32(FP16_STRESS_SCALE) for k, v in feeds[0].items()})
        for feed in feeds:
            reference, got = run_onnx(session, feed), runner(feed)
            if precision == "fp32":
                compare(reference, got, report=report)
            elif name == "similarity":
                compare(reference, got, atol=FP16_SCORE_ATOL, min_cosine=FP16_MIN_COSINE, report=report)
            else:
                compare(reference, got, atol=None, min_cosine=FP16_MIN_COSINE, report=report)
    return report


def check_engine_retrieval(export_dir: Path, config: ProstConfig, engines: dict, precision: str, data: Path) -> dict:
    """Retrieval parity on a dataset's test split: engine R@1/5/10 within FP16_RECALL_POINTS of ONNX Runtime (fp16),
    identical top-10 rankings (fp32)."""
    runners = {name: EngineRunner(export_dir / meta["file"], meta) for name, meta in engines.items()}
    tolerance = 0.0 if precision == "fp32" else FP16_RECALL_POINTS
    batch = min(meta["profile"]["max"] for meta in engines.values())
    return check_backend_retrieval(export_dir, config, data, lambda graph, feeds: runners[graph](feeds), tolerance,
                                   batch)


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("build-engines", help="build TensorRT engines from an export directory (GPU)")
    parser.add_argument("--export", required=True, help="directory written by `prost export`")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="engine precision; fp16 keeps LayerNorm, softmax and reductions in fp32")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch the optimisation profile is tuned for")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="largest batch of the profile (at least the repository's --max-batch-size)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file (default: EXPORT/timing.sm<cc>.trt<version>.cuda<version>.cache)")
    parser.add_argument("--data", type=Path, help="dataset whose test split gates retrieval (R@K) parity")
    parser.set_defaults(func=_build_cmd)


def _build_cmd(args: argparse.Namespace) -> int:
    require_tensorrt()
    engines = build_engines(Path(args.export), precision=args.precision,
                            profile=Profile(1, args.opt_batch, args.max_batch),  # Triton sends batches of 1
                            timing_cache=args.timing_cache, data=args.data)
    for name, meta in engines.items():
        print(f"{name}: {meta['file']} ({meta['precision']}, TensorRT {meta['tensorrt']}, {meta['gpu']}, "
              f"{meta['build_seconds']} s)")
    return 0
