"""`prost repository build`: a versioned Triton model repository from an export directory.

Models (names from `prost_client.protocol`): prost_tokenizer, prost_text, prost_video, prost_similarity,
prost_video_decode, prost_gallery and the ensembles prost_text_search, prost_encode_video, prost_score. Variants
change only the three graph models: "cpu" runs the ONNX files in a python model on ONNX Runtime's CPU provider,
"onnxruntime" uses Triton's ORT backend with the TensorRT accelerator, "tensorrt" serves plans from
`prost build-engines`. Configs are `model_config_pb2.ModelConfig` messages written with `text_format`.

Versioning: building into an existing repository writes version N+1 of a model only when its config or files
differ from version N. The gallery keeps its data while the video encoder is unchanged; a new video encoder
resets it to an empty version (re-index with `prost-client index`). `manifest.json` at the root lists every
model, its versions and the sha256 of its files.

Response cache: Triton keys it by model name, model *version* and inputs, and keeps entries across reloads. A new
gallery version leaves the ensembles at version 1, so a cached ensemble would answer with the old gallery (seen on
Triton 2.51). Caching is therefore enabled on prost_text and prost_gallery, whose versions change with their content
(a new gallery is always a new, higher version), and not on the ensembles.

Shapes and defaults:
- Empty gallery: the builder writes prost_gallery version 1 with zero videos, so every model loads and search answers
  zero results until `prost-client index` publishes version 2.
- TOP_K is an `optional` input of prost_text_search and prost_gallery; Triton 2.51 ensembles pass an absent optional
  input on as absent, and the gallery then uses DEFAULT_TOP_K.
- prost_score pairs T texts with V videos, so it cannot batch: max_batch_size 0 with TEXT/VIDEO dims [-1, 1]; the
  batched composing models read the leading -1 as their batch, prost_similarity (max_batch_size 0) takes [T, ...] and
  [V, ...]. T and V are bounded by the text and video max_batch_size. BETA is optional on the cpu variant (the python
  runner applies DEFAULT_BETA); ORT and TensorRT graphs need it fed, and ProstClient sends the exported beta found in
  prost_score's `parameters`.
- model_warmup (one zero-data request) on the three graph models; none on the python models that take strings.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from prost.config import ProstConfig
from prost.errors import ProstError, RepositoryError
from prost_client import gallery as G, protocol as P
from prost_export.specs import GraphSpec, TensorSpec, graph_specs

log = logging.getLogger(__name__)

VARIANTS = ("cpu", "onnxruntime", "tensorrt")
REPOSITORY_FORMAT = "prost-serve-repository/1"
_DTYPES = {"float32": mc.TYPE_FP32, "int32": mc.TYPE_INT32, "string": mc.TYPE_STRING}
_GRAPHS = {P.TEXT_MODEL: "text_prototypes", P.VIDEO_MODEL: "video_prototypes", P.SIMILARITY_MODEL: "similarity"}


@dataclass(frozen=True)
class RepositoryOptions:
    """Serving knobs; the architecture always comes from the export's config."""

    variant: str = "cpu"
    max_batch_size: int = 32  # texts per batch: tokenizer, text encoder, gallery, prost_text_search
    max_video_batch_size: int = 8  # videos per batch: decoder, video encoder, prost_encode_video
    instances: int = 1  # instances of each compute model (the gallery always has one: it holds the gallery)
    queue_delay_us: int = 500  # dynamic batcher delay
    fp16: bool = False  # onnxruntime variant: TensorRT accelerator precision
    trt_cache_dir: str = "/tmp/prost-trt-cache"  # onnxruntime variant: engine and timing cache on the server
    intra_op_threads: int = 0  # ONNX Runtime threads in python models (0 = ORT default)
    max_top_k: int = 1000

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise RepositoryError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        for name in ("max_batch_size", "max_video_batch_size", "instances", "max_top_k"):
            if getattr(self, name) < 1:
                raise RepositoryError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ModelSpec:
    """One model directory: its config and the files of a version directory (bytes or source paths)."""

    config: mc.ModelConfig
    files: dict[str, Path | bytes] = field(default_factory=dict)


def write_repository(export_dir: str | Path, out: str | Path, variant: str = "cpu", *, max_batch_size: int = 32,
                     max_video_batch_size: int = 8, instances: int = 1, fp16: bool = False, queue_delay_us: int = 500,
                     trt_cache_dir: str = "/tmp/prost-trt-cache", intra_op_threads: int = 0,
                     max_top_k: int = 1000) -> Path:
    """Write (or update with new versions) the Triton repository `out` for the export in `export_dir`."""
    options = RepositoryOptions(variant, max_batch_size, max_video_batch_size, instances, queue_delay_us, fp16,
                                trt_cache_dir, intra_op_threads, max_top_k)
    export_dir, out = Path(export_dir), Path(out)
    manifest = _read_export(export_dir)
    config = ProstConfig.from_dict(manifest["config"])
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(export_dir, manifest, config, options)
    models[P.GALLERY_MODEL].files.update(_gallery_data(out, models[P.GALLERY_MODEL].config, config))
    for name, spec in models.items():
        version = _write_model(out / name, spec)
        log.info("%s: %s", name, f"version {version} written" if version else "unchanged")
    repo_manifest = {"format": REPOSITORY_FORMAT, "variant": variant,
                     "export": {"path": str(export_dir.resolve()), "config": manifest["config"],
                                "files": {k: v["sha256"] for k, v in manifest["files"].items()}},
                     "models": {name: G.describe_model_dir(out / name) for name in sorted(models)}}
    (out / G.MANIFEST_FILE).write_text(json.dumps(repo_manifest, indent=2, sort_keys=True) + "\n")
    return out


def build_models(export_dir: Path, manifest: dict, config: ProstConfig,
                 options: RepositoryOptions) -> dict[str, ModelSpec]:
    """Every model of the repository, keyed by name (configs and version-directory files, no gallery data)."""
    specs = graph_specs(config)
    source = resources.files("prost_model_repository")
    py = {name: Path(str(source / name / "model.py"))
          for name in ("tokenizer", "onnx_runner", "video_decode", "gallery")}
    mbs, vbs = options.max_batch_size, options.max_video_batch_size
    video_sha = manifest["files"][specs["video_prototypes"].onnx_file]["sha256"]
    models = {
        P.TOKENIZER_MODEL: ModelSpec(_python(
            P.TOKENIZER_MODEL, mbs, options.instances, options, [_io(P.TEXT, "string", [1])],
            [_io(P.TOKEN_IDS, "int32", [config.max_words])], {"MAX_WORDS": config.max_words}),
            {"model.py": py["tokenizer"]}),
        P.VIDEO_DECODE_MODEL: ModelSpec(_python(
            P.VIDEO_DECODE_MODEL, vbs, options.instances, options, [_io(P.VIDEO, "string", [1])],
            [_io(P.FRAMES, "float32", [config.head.num_frames, 3, config.vision.image_size, config.vision.image_size])],
            {"NUM_FRAMES": config.head.num_frames, "IMAGE_SIZE": config.vision.image_size}),
            {"model.py": py["video_decode"]}),
        P.GALLERY_MODEL: _gallery_model(export_dir, specs, config, options, video_sha, py["gallery"]),
    }
    for name, graph in _GRAPHS.items():
        batch = {P.TEXT_MODEL: mbs, P.VIDEO_MODEL: vbs, P.SIMILARITY_MODEL: 0}[name]
        models[name] = _graph_model(name, specs[graph], batch, export_dir, config, options, py["onnx_runner"])
    models.update(_ensembles(specs, config, options))
    return models


def _io(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> tuple:
    """(name, data type, dims, optional) of a config input or output."""
    return name, _DTYPES[dtype], [int(d) for d in dims], optional


def _spec_io(tensor: TensorSpec, batched: bool, optional: bool = False) -> tuple:
    """Config dims of a graph tensor: without the batch dimension when batched, dynamic dims as -1."""
    shape = tensor.shape[1:] if batched else tensor.shape
    return _io(tensor.name, tensor.dtype, [-1 if isinstance(d, str) else int(d) for d in shape], optional=optional)


def _base(name: str, max_batch_size: int, inputs: list[tuple], outputs: list[tuple],
          params: dict | None = None) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    for tensor_name, dtype, dims, optional in inputs:
        config.input.add(name=tensor_name, data_type=dtype, dims=dims, optional=optional)
    for tensor_name, dtype, dims, _ in outputs:
        config.output.add(name=tensor_name, data_type=dtype, dims=dims)
    for key, value in (params or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def _batching(config: mc.ModelConfig, options: RepositoryOptions, preferred: list[int] | None = None) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    if preferred:
        config.dynamic_batching.preferred_batch_size.extend(sorted(set(preferred)))


def _python(name: str, mbs: int, count: int, options: RepositoryOptions, inputs, outputs,
            params: dict) -> mc.ModelConfig:
    config = _base(name, mbs, inputs, outputs, params)
    config.backend = "python"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)
    _batching(config, options)
    return config


def _graph_model(name: str, spec: GraphSpec, mbs: int, export_dir: Path, config: ProstConfig,
                 options: RepositoryOptions, runner: Path) -> ModelSpec:
    """prost_text / prost_video / prost_similarity in the chosen variant."""
    optional_beta = options.variant == "cpu"  # a python model can default BETA; ORT and TRT graphs need it fed
    inputs = [_spec_io(t, mbs > 0, optional=optional_beta and t.name == P.BETA) for t in spec.inputs]
    outputs = [_spec_io(t, mbs > 0) for t in spec.outputs]
    params = {"DEFAULT_BETA": json.dumps([config.beta])} if optional_beta and name == P.SIMILARITY_MODEL else {}
    model = _base(name, mbs, inputs, outputs, params)
    kind = mc.ModelInstanceGroup.KIND_CPU if options.variant == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    model.instance_group.add(kind=kind, count=options.instances)
    opt = min(8, mbs) if mbs else 0
    engine = manifest_engine(export_dir, spec) if options.variant == "tensorrt" else None
    if engine:  # the engine's optimisation profile bounds the batch; its opt size is the preferred batch
        limit = engine["profile"]["max"]
        needed = mbs or max(options.max_batch_size, options.max_video_batch_size)
        if needed > limit:
            raise RepositoryError(f"{name}: batches of {needed} exceed the TensorRT profile max {limit} of "
                                  f"{engine['file']}; lower --max-batch-size/--max-video-batch-size or rebuild engines")
        opt = min(engine["profile"]["opt"], mbs) if mbs else 0
    if mbs:
        _batching(model, options, [opt, mbs] if options.variant != "cpu" else None)
    if name == P.TEXT_MODEL:
        model.response_cache.enable = True  # repeated queries skip the text encoder (see the module docstring)
    files = _onnx_files(export_dir, spec)
    if options.variant == "cpu":
        model.backend = "python"
        model.parameters["ONNX_FILE"].string_value = "model.onnx"
        model.parameters["INTRA_OP_THREADS"].string_value = str(options.intra_op_threads)
        files["model.py"] = runner
    elif options.variant == "onnxruntime":
        model.backend = "onnxruntime"
        _trt_accelerator(model, spec, options, opt or 1, mbs or options.max_batch_size, options.max_video_batch_size)
    else:
        model.platform = "tensorrt_plan"
        files = _plan_files(export_dir, spec, model)
    _warmup(model, spec, mbs)
    return ModelSpec(model, files)


def manifest_engine(export_dir: Path, spec: GraphSpec) -> dict | None:
    """Metadata `prost build-engines` recorded for a graph's engine (file, profile, compute capability), if any."""
    from prost_export.onnx import read_manifest

    return read_manifest(export_dir).get("engines", {}).get(spec.name)


def _trt_accelerator(model: mc.ModelConfig, spec: GraphSpec, options: RepositoryOptions, opt: int, texts: int,
                     videos: int) -> None:
    """ORT's TensorRT execution provider: precision, engine/timing cache and one optimisation profile."""
    def shapes(batch: int, other: int) -> str:
        # The batch dim (or the similarity graph's texts/videos dims) at `batch` / `other`; static dims as they are.
        def dim(d):
            return str(d) if isinstance(d, int) else str(other if d == "videos" else batch)
        return ",".join(f"{t.name}:{'x'.join(dim(d) for d in t.shape)}" for t in spec.inputs)

    accel = model.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    params = {"precision_mode": "FP16" if options.fp16 else "FP32", "max_workspace_size_bytes": str(2 << 30),
              "trt_engine_cache_enable": "1", "trt_engine_cache_path": f"{options.trt_cache_dir}/{model.name}",
              "trt_timing_cache_enable": "1", "trt_timing_cache_path": f"{options.trt_cache_dir}/timing",
              "trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(opt, videos),
              "trt_profile_max_shapes": shapes(texts, videos)}
    if options.fp16:
        params["trt_layer_norm_fp32_fallback"] = "1"  # CLIP LayerNorm overflows in FP16 (serving.md 4.5)
    for key, value in params.items():
        accel.parameters[key] = value


def _warmup(model: mc.ModelConfig, spec: GraphSpec, mbs: int) -> None:
    """One zero-data request at load time (for ORT-TRT this builds the engine before the model is ready)."""
    warm = model.model_warmup.add(name="zeros", batch_size=1)
    for tensor in spec.inputs:
        shape = tensor.shape[1:] if mbs else tensor.shape
        value = warm.inputs[tensor.name]
        value.data_type = _DTYPES[tensor.dtype]
        value.dims.extend([1 if isinstance(d, str) else int(d) for d in shape])
        value.zero_data = True


def _onnx_files(export_dir: Path, spec: GraphSpec) -> dict[str, Path]:
    """model.onnx plus its external-data file, which keeps its name (the graph refers to it)."""
    files: dict[str, Path] = {"model.onnx": export_dir / spec.onnx_file}
    data = export_dir / f"{spec.onnx_file}.data"
    if data.is_file():
        files[data.name] = data
    return files


def _plan_files(export_dir: Path, spec: GraphSpec, model: mc.ModelConfig) -> dict[str, Path]:
    """model.plan and per-compute-capability `<graph>.sm<cc>.plan` engines from `prost build-engines`."""
    files: dict[str, Path] = {}
    if (export_dir / spec.plan_file).is_file():
        files["model.plan"] = export_dir / spec.plan_file
    for plan in sorted(export_dir.glob(f"{spec.name}.sm*.plan")):
        match = re.fullmatch(rf"{re.escape(spec.name)}\.sm(\d+)(\d)\.plan", plan.name)
        if match:
            files[f"model.sm{match[1]}{match[2]}.plan"] = plan
            model.cc_model_filenames[f"{match[1]}.{match[2]}"] = f"model.sm{match[1]}{match[2]}.plan"
    if not files:
        raise RepositoryError(f"no TensorRT engine {spec.plan_file} (or {spec.name}.sm<cc>.plan) in {export_dir}; "
                              f"run `prost build-engines --export {export_dir}` on the GPU host first")
    return files


def _gallery_model(export_dir: Path, specs: dict[str, GraphSpec], config: ProstConfig, options: RepositoryOptions,
                   video_sha: str, source: Path) -> ModelSpec:
    h, d = config.head, config.embed_dim
    model = _python(P.GALLERY_MODEL, options.max_batch_size, 1, options,
                    [_io(P.PHRASE_PROTOTYPES, "float32", [h.num_phrases, d]),
                     _io(P.SENTENCE_EMBEDDING, "float32", [d]), _io(P.TOP_K, "int32", [1], optional=True)],
                    [_io(P.VIDEO_IDS, "string", [-1]), _io(P.SCORES, "float32", [-1]),
                     _io(P.MATCHED_FRAMES, "int32", [-1, h.num_phrases])],
                    {"BETA": repr(float(config.beta)), "DEFAULT_TOP_K": P.DEFAULT_TOP_K, "MAX_TOP_K": options.max_top_k,
                     "BLOCK_ELEMENTS": 1 << 24, "INTRA_OP_THREADS": options.intra_op_threads,
                     "VIDEO_ENCODER_SHA256": video_sha})
    model.response_cache.enable = True  # keyed by version: every published gallery is a new version
    return ModelSpec(model, {G.MODEL_FILE: source,
                             G.SIMILARITY_FILE: export_dir / specs["similarity"].onnx_file})


def _gallery_data(out: Path, model: mc.ModelConfig, config: ProstConfig) -> dict[str, bytes]:
    """The latest gallery's data while the video encoder is unchanged, else an empty gallery."""
    model_dir = out / P.GALLERY_MODEL
    existing = G.versions(model_dir)
    if existing and (model_dir / "config.pbtxt").is_file():
        old = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        latest = model_dir / str(existing[-1])
        key = "VIDEO_ENCODER_SHA256"
        if old.parameters[key].string_value == model.parameters[key].string_value and all(
                (latest / f).is_file() for f in (G.TENSORS_FILE, G.IDS_FILE)):
            return {f: (latest / f).read_bytes() for f in (G.TENSORS_FILE, G.IDS_FILE)}
        log.warning("%s: the video encoder changed; the gallery starts empty, re-index with `prost-client index`",
                    P.GALLERY_MODEL)
    h, d = config.head, config.embed_dim
    return G.gallery_files([], np.zeros((0, h.num_frames, h.num_objects, d), np.float32),
                           np.zeros((0, h.num_events, d), np.float32))


def _ensembles(specs: dict[str, GraphSpec], config: ProstConfig, options: RepositoryOptions) -> dict[str, ModelSpec]:
    h, d, s = config.head, config.embed_dim, config.vision.image_size
    mbs, vbs = options.max_batch_size, options.max_video_batch_size
    search = _ensemble(P.TEXT_SEARCH_MODEL, mbs,
                       [_io(P.TEXT, "string", [1]), _io(P.TOP_K, "int32", [1], optional=True)],
                       [_io(P.VIDEO_IDS, "string", [-1]), _io(P.SCORES, "float32", [-1]),
                        _io(P.MATCHED_FRAMES, "int32", [-1, h.num_phrases])],
                       [(P.TOKENIZER_MODEL, {P.TEXT: P.TEXT}, {P.TOKEN_IDS: "token_ids"}),
                        (P.TEXT_MODEL, {P.TOKEN_IDS: "token_ids"},
                         {P.PHRASE_PROTOTYPES: "phrases", P.SENTENCE_EMBEDDING: "sentence"}),
                        (P.GALLERY_MODEL, {P.PHRASE_PROTOTYPES: "phrases", P.SENTENCE_EMBEDDING: "sentence",
                                           P.TOP_K: P.TOP_K},
                         {P.VIDEO_IDS: P.VIDEO_IDS, P.SCORES: P.SCORES, P.MATCHED_FRAMES: P.MATCHED_FRAMES})])
    video_steps = [(P.VIDEO_DECODE_MODEL, {P.VIDEO: P.VIDEO}, {P.FRAMES: "frames"}),
                   (P.VIDEO_MODEL, {P.FRAMES: "frames"},
                    {P.OBJECT_PROTOTYPES: P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES: P.EVENT_PROTOTYPES})]
    encode = _ensemble(P.ENCODE_VIDEO_MODEL, vbs, [_io(P.VIDEO, "string", [1])],
                       [_io(P.OBJECT_PROTOTYPES, "float32", [h.num_frames, h.num_objects, d]),
                        _io(P.EVENT_PROTOTYPES, "float32", [h.num_events, d])], video_steps)
    # prost_score pairs T texts with V videos, so it cannot batch (T != V): max_batch_size 0, explicit [-1, 1]
    # inputs; its batched composing models see the leading -1 as their batch dimension.
    score = _ensemble(P.SCORE_MODEL, 0,
                      [_io(P.TEXT, "string", [-1, 1]), _io(P.VIDEO, "string", [-1, 1]),
                       _io(P.BETA, "float32", [1], optional=options.variant == "cpu")],
                      [_io(P.SIMILARITY, "float32", [-1, -1])],
                      [(P.TOKENIZER_MODEL, {P.TEXT: P.TEXT}, {P.TOKEN_IDS: "token_ids"}),
                       (P.TEXT_MODEL, {P.TOKEN_IDS: "token_ids"},
                        {P.PHRASE_PROTOTYPES: "phrases", P.SENTENCE_EMBEDDING: "sentence"}),
                       (P.VIDEO_DECODE_MODEL, {P.VIDEO: P.VIDEO}, {P.FRAMES: "frames"}),
                       (P.VIDEO_MODEL, {P.FRAMES: "frames"}, {P.OBJECT_PROTOTYPES: "objects",
                                                             P.EVENT_PROTOTYPES: "events"}),
                       (P.SIMILARITY_MODEL, {P.PHRASE_PROTOTYPES: "phrases", P.SENTENCE_EMBEDDING: "sentence",
                                             P.OBJECT_PROTOTYPES: "objects", P.EVENT_PROTOTYPES: "events",
                                             P.BETA: P.BETA}, {P.SIMILARITY: P.SIMILARITY})])
    score.config.parameters["BETA"].string_value = repr(float(config.beta))  # the default clients send
    return {m.config.name: m for m in (search, encode, score)}


def _ensemble(name: str, mbs: int, inputs, outputs, steps) -> ModelSpec:
    config = _base(name, mbs, inputs, outputs)
    config.platform = "ensemble"
    for model, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return ModelSpec(config, {})


def _read_export(export_dir: Path) -> dict:
    """The export manifest, with every ONNX file present and matching its sha256."""
    from prost_export.onnx import read_manifest

    try:
        manifest = read_manifest(export_dir)
    except ProstError as exc:
        raise RepositoryError(str(exc)) from exc
    for name in ("video_prototypes.onnx", "text_prototypes.onnx", "similarity.onnx"):
        entry = manifest.get("files", {}).get(name)
        path = export_dir / name
        if entry is None or not path.is_file():
            raise RepositoryError(f"{path} is missing from the export; run `prost export` again")
        if G.sha256_file(path) != entry["sha256"]:
            raise RepositoryError(f"{path} does not match the sha256 in {export_dir / 'manifest.json'}; "
                                  f"the export was modified, run `prost export` again")
    return manifest


def _write_model(model_dir: Path, spec: ModelSpec) -> int | None:
    """Write a new version when the config or the files differ from the latest version; returns it, or None."""
    text = text_format.MessageToString(spec.config)
    text_format.Parse(text, mc.ModelConfig())  # the written text parses against Triton's schema
    files = {name: src if isinstance(src, bytes) else Path(src) for name, src in spec.files.items()}
    existing = G.versions(model_dir)
    config_path = model_dir / "config.pbtxt"
    if existing and config_path.is_file() and config_path.read_text() == text:
        latest = model_dir / str(existing[-1])
        present = sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        if present == sorted(files) and all(_same(latest / n, src) for n, src in files.items()):
            return None
    model_dir.mkdir(parents=True, exist_ok=True)
    version = G.write_version(model_dir, files)
    tmp = config_path.with_name(".config.pbtxt.tmp")
    tmp.write_text(text)
    tmp.replace(config_path)
    return version


def _same(path: Path, src: Path | bytes) -> bool:
    if isinstance(src, bytes):
        return path.read_bytes() == src
    return path.stat().st_size == src.stat().st_size and G.sha256_file(path) == G.sha256_file(src)


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("repository", help="Triton model repositories")
    verbs = parser.add_subparsers(dest="repository_command", required=True, metavar="VERB")
    build = verbs.add_parser("build", help="write or update a versioned Triton repository from an export")
    build.add_argument("--export", required=True, type=Path, help="directory written by `prost export`")
    build.add_argument("--out", required=True, type=Path, help="repository directory (created or updated)")
    build.add_argument("--variant", choices=VARIANTS, default="cpu")
    defaults = RepositoryOptions()
    for flag, attr, kind in (("--max-batch-size", "max_batch_size", int),
                             ("--max-video-batch-size", "max_video_batch_size", int),
                             ("--instances", "instances", int), ("--queue-delay-us", "queue_delay_us", int),
                             ("--trt-cache-dir", "trt_cache_dir", str),
                             ("--intra-op-threads", "intra_op_threads", int), ("--max-top-k", "max_top_k", int)):
        build.add_argument(flag, dest=attr, type=kind, default=getattr(defaults, attr),
                           help=f"default {getattr(defaults, attr)}")
    build.add_argument("--fp16", action="store_true", help="onnxruntime variant: FP16 TensorRT accelerator")
    build.set_defaults(func=_build_cmd)


def _build_cmd(args: argparse.Namespace) -> int:
    out = write_repository(args.export, args.out, args.variant, max_batch_size=args.max_batch_size,
                           max_video_batch_size=args.max_video_batch_size, instances=args.instances, fp16=args.fp16,
                           queue_delay_us=args.queue_delay_us, trt_cache_dir=args.trt_cache_dir,
                           intra_op_threads=args.intra_op_threads, max_top_k=args.max_top_k)
    manifest = json.loads((out / G.MANIFEST_FILE).read_text())
    for name, entry in manifest["models"].items():
        print(f"{name:22s} versions {entry['versions']}")
    print(f"wrote {out}")
    return 0
