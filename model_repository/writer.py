"""`prost repository build`: a versioned Triton model repository from an export directory.

Models (names from `prost_client.protocol`): prost_tokenizer, prost_text, prost_video, prost_similarity,
prost_video_decode, prost_gallery and the ensembles of `prost_model_repository.ensembles`. Variants change only the three
graph models: "cpu" runs the ONNX files in a python model on ONNX Runtime's CPU provider, "onnxruntime" uses Triton's
ORT backend with the TensorRT accelerator, "tensorrt" serves the plans `prost build-engines` listed in the export
manifest or, with build_on_target, ships the ONNX graphs for the serving image to build its plans at start
(`prost_model_repository.plans`). Configs are `model_config_pb2.ModelConfig` messages written with `text_format`.

Versioning: building into an existing repository writes version N+1 of a model only when its config (for build on
target: its two alternative configs, as config.pbtxt is the start step's choice) or files differ from version N. The gallery keeps its data while the video encoder is unchanged; a new video encoder
resets it to an empty version (re-index with `prost-client index`). `manifest.json` at the root lists every
model, its versions and the sha256 of its files. Writers lock each model directory while writing it and the gallery
from reading its data to writing the new version (`prost_model_repository.storage`), so a concurrent `prost-client index`
is never rolled back.

Response cache: Triton keys it by model name, model *version* and inputs, and keeps entries across reloads. A new
gallery version leaves the ensembles at version 1, so a cached ensemble would answer with the old gallery (seen on
Triton 2.51): the ensembles are never cached. Neither is any python-backend model: when its stub dies mid-request,
Triton 2.51 caches the empty response and serves it after the watchdog's reload, so a retried query failed for its
whole deadline (measured; a stub kill under load cost 8 of 8 callers their call). The response cache therefore holds
prost_text only where it runs in Triton's own backend (onnxruntime and tensorrt variants).

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
- prost_video_decode samples frames with the export config's `sample_fps` (as training did) and refuses, per request,
  inputs over MAX_VIDEO_BYTES and clips listing more than MAX_SOURCE_FRAMES frames before decoding them.
- model_warmup (one zero-data request) on the three graph models; none on the python models that take strings.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from prost.config import ProstConfig
from prost.errors import GalleryError, ProstError, RepositoryError
from prost.fileio import check_writable, sha256_file, write_atomic
from prost.gallery.store import data_files, version_stamp
from prost.model.similarity import DEFAULT_BLOCK_ELEMENTS
from prost_client import gallery_format as G, protocol as P
from prost_export.manifest import read_manifest
from prost_export.precision import PRECISIONS, served_file
from prost_export.specs import GraphSpec, arch_tag, graph_specs
from prost_model_repository import param_keys as K, storage
from prost_model_repository.ensembles import DTYPES, ModelSpec, ensembles, model_config, search_results, spec_tensor
from prost_model_repository.ensembles import tensor
from prost_model_repository.graph_rewrite import with_float16_inputs
from prost_model_repository.plans import ONNXRUNTIME_CONFIG, PLAN_FILE, SERVED_PLAN, TENSORRT_CONFIG

log = logging.getLogger(__name__)

VARIANTS = ("cpu", "onnxruntime", "tensorrt")
_GRAPHS = {P.TEXT_MODEL: "text_prototypes", P.VIDEO_MODEL: "video_prototypes", P.SIMILARITY_MODEL: "similarity"}
FP16_HELP = ("onnxruntime variant: FP16 TensorRT accelerator. Only LayerNorm is pinned to FP32 "
             "(trt_layer_norm_fp32_fallback); softmax and reductions run in FP16 and the engine, built on the "
             "server, passes no parity gate. Prefer --variant tensorrt with `prost build-engines --precision fp16`, "
             "which keeps them in FP32 and gates the engines. tensorrt variant with --build-on-target: fp16 plans "
             "(LayerNorm, softmax and reductions pinned to FP32, checked by the engine inspector).")


def _option(default, help: str):
    """A RepositoryOptions field; `help` is its `prost repository build` flag's help."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RepositoryOptions:
    """Serving knobs; the architecture always comes from the export's config."""

    variant: str = _option("cpu", "see --variant")
    max_batch_size: int = _option(32, 'texts per batch: tokenizer, text encoder, gallery, text ensembles')
    max_video_batch_size: int = _option(8, 'videos per batch: decoder, video encoder, prost_encode_video')
    instances: int = _option(1, 'instances of each compute model (the gallery always has one: it holds the gallery)')
    queue_delay_us: int = _option(0, 'dynamic batcher delay (0: requests that queued while an instance was busy '
                                     'still run as one batch; measured in README: Benchmark)')
    fp16: bool = _option(False, 'onnxruntime variant, or tensorrt --build-on-target: TensorRT precision')
    trt_cache_dir: str = _option("/tmp/prost-trt-cache", 'onnxruntime variant: engine and timing cache on the server')
    intra_op_threads: int = _option(0, 'threads of ONNX Runtime in python models and of the gallery engine (0: defaults)')
    max_top_k: int = _option(1000, 'largest TOP_K a search may ask for')
    max_video_bytes: int = _option(256 << 20, 'larger VIDEO inputs are refused before decoding')
    max_source_frames: int = _option(20000, 'clips listing more frames are refused before decoding')
    tensorrt_version: str = _option("", "tensorrt variant: the serving Triton's TensorRT version (required without "
                                        "build_on_target); plans built with another are refused; 'any' skips it")
    precision: str = _option("fp32", "cpu variant: the encoders' precision, fp32 or one `prost export --precision` "
                                     "added and gated (int8)")
    build_on_target: bool = _option(False, "tensorrt variant: ship the ONNX graphs and let the serving image build "
                                           "the plans at start, with its own TensorRT, for the GPU it finds")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise RepositoryError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        for name in ("max_batch_size", "max_video_batch_size", "instances", "max_top_k", "max_video_bytes",
                     "max_source_frames"):
            if getattr(self, name) < 1:
                raise RepositoryError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise RepositoryError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.variant != "cpu":
            raise RepositoryError(f"--precision {self.precision} serves ONNX Runtime's CPU kernels: use --variant cpu "
                                  f"(GPU variants take fp16 through --fp16 or `prost build-engines`)")
        if self.variant == "tensorrt" and not self.build_on_target and not self.tensorrt_version:
            raise RepositoryError("a TensorRT plan loads only in the TensorRT version that built it: give the serving "
                                  "Triton's with --tensorrt-version (in its image: python3 -c 'import tensorrt; "
                                  "print(tensorrt.__version__)'), or let the image build its plans: --build-on-target "
                                  "(--tensorrt-version any skips the check)")
        if self.build_on_target and self.variant != "tensorrt":
            raise RepositoryError("--build-on-target builds TensorRT plans at the server's start: use it with "
                                  "--variant tensorrt")
        if self.max_top_k < P.DEFAULT_TOP_K:
            raise RepositoryError(f"max_top_k {self.max_top_k} is below the default TOP_K {P.DEFAULT_TOP_K}: every "
                                  f"search without TOP_K would be refused")


def write_repository(export_dir: str | Path, out: str | Path, variant: str = "cpu", **options) -> Path:
    """Write (or update with new versions) the Triton repository `out` for the export in `export_dir`.

    `options` are the RepositoryOptions fields (max_batch_size=..., fp16=..., ...).
    """
    options = RepositoryOptions(variant=variant, **options)
    export_dir, out = Path(export_dir), check_writable(out, folder=True)
    manifest = _read_export(export_dir)
    config = ProstConfig.from_dict(manifest["config"])
    previous = _previous_manifest(out)
    repository = (previous.get("id") or _gallery_parameter(out / P.GALLERY_MODEL, P.REPOSITORY_ID_PARAM)
                  or storage.new_repository_id())
    models = build_models(export_dir, manifest, config, options, repository)  # refuses before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create the repository {out}: {exc.strerror or exc}") from None
    with storage.DirectoryLock(out):
        try:
            storage.read_manifest(out)
        except RepositoryError as exc:  # the entries are listed one by one below; start from an empty list
            log.warning("%s", exc)
            storage.write_manifest(out, {"models": {}}, locked=True)
    for name, spec in models.items():
        with storage.DirectoryLock(out / name):  # the gallery: from reading its data to listing the new version
            if name == P.GALLERY_MODEL:
                spec.files.update(_gallery_data(out, spec.config, graph_specs(config)))
            version = _write_model(out / name, spec)
            storage.update_manifest(out, name)  # as a publisher does: model lock, then the repository's
        log.info("%s: %s", name, f"version {version} written" if version else "unchanged")
    with storage.DirectoryLock(out):  # keeps the entries as listed: a publisher may have listed a newer one since
        current = storage.read_manifest(out)
        listed = current["models"]
        lost = sorted(set(models) - set(listed))
        if lost:  # another build reset a damaged manifest meanwhile
            raise RepositoryError(f"{out / storage.MANIFEST_FILE} lost the entries of {', '.join(lost)} while this "
                                  f"build ran (another `prost repository build`?); run the build again")
        storage.write_manifest(out, {
            "format": storage.REPOSITORY_FORMAT, "id": repository, "variant": variant,
            "precision": options.precision,
            "export": {"path": str(export_dir.resolve()), "config": manifest["config"],
                       "files": {k: v["sha256"] for k, v in manifest["files"].items()}},
            "models": {name: listed[name] for name in sorted(models)},
            "highest": current.get("highest", {})}, locked=True)
    return out


def _previous_manifest(out: Path) -> dict:
    """The manifest of the repository being updated ({} for a new or empty folder, or a damaged manifest, which the
    build rewrites); refuses a folder that holds something else, an export included, so nothing is mixed into it."""
    if not out.is_dir() or not any(out.iterdir()):
        return {}
    if not (out / storage.MANIFEST_FILE).is_file():
        raise RepositoryError(f"--out {out} is not empty and is not a model repository (no {storage.MANIFEST_FILE}); "
                              f"pick a new or empty folder, or a repository built before")
    try:
        manifest = storage.read_manifest(out)
    except RepositoryError:
        return {}
    kind = str(manifest.get("format", storage.REPOSITORY_FORMAT))  # a build that stopped early wrote no format yet
    if kind != storage.REPOSITORY_FORMAT:
        what = "an export directory" if kind.startswith("prost-serve-export") else f"not a model repository ({kind})"
        raise RepositoryError(f"--out {out} is {what}; pick a new or empty folder for the repository")
    return manifest


def build_models(export_dir: Path, manifest: dict, config: ProstConfig, options: RepositoryOptions,
                 repository: str) -> dict[str, ModelSpec]:
    """Every model of the repository `repository` (its id), keyed by name (configs and version-directory files, no
    gallery data)."""
    specs = graph_specs(config)
    source = resources.files("prost_model_repository")
    py = {name: Path(str(source / name / "model.py"))
          for name in ("tokenizer", "onnx_runner", "video_decode", "gallery")}
    mbs, vbs = options.max_batch_size, options.max_video_batch_size
    video_sha = manifest["files"][served_file(manifest, specs["video_prototypes"], options.precision)]["sha256"]
    beta = repr(float(config.beta))  # BETA_PARAM: the one encoding of beta in the repository
    (token_ids,), (frames,) = specs["text_prototypes"].inputs, specs["video_prototypes"].inputs
    models = {
        P.TOKENIZER_MODEL: ModelSpec(_python(
            P.TOKENIZER_MODEL, mbs, options.instances, options, [tensor(P.TEXT, "string", [1])],
            [spec_tensor(token_ids, batched=True)], {K.MAX_WORDS: token_ids.shape[1]}),
            {"model.py": py["tokenizer"]}),
        P.VIDEO_DECODE_MODEL: ModelSpec(_python(
            P.VIDEO_DECODE_MODEL, vbs, options.instances, options, [tensor(P.VIDEO, "string", [1])],
            [spec_tensor(frames, batched=True)],
            {K.NUM_FRAMES: frames.shape[1], K.IMAGE_SIZE: frames.shape[-1],
             K.SAMPLE_FPS: "none" if config.sample_fps is None else repr(float(config.sample_fps)),
             K.MAX_VIDEO_BYTES: options.max_video_bytes, K.MAX_SOURCE_FRAMES: options.max_source_frames}),
            {"model.py": py["video_decode"]}),
        P.GALLERY_MODEL: _gallery_model(export_dir, specs, beta, options, video_sha, repository, py["gallery"]),
    }
    for name, graph in _GRAPHS.items():
        batch = {P.TEXT_MODEL: mbs, P.VIDEO_MODEL: vbs, P.SIMILARITY_MODEL: 0}[name]
        models[name] = _graph_model(name, specs[graph], batch, export_dir, manifest, beta, options,
                                    py["onnx_runner"])
    models.update(ensembles(specs, mbs, vbs, beta, optional_beta=options.variant == "cpu"))
    return models


def _batching(config: mc.ModelConfig, options: RepositoryOptions) -> None:
    """Dynamic batching, by default without a delay; no preferred_batch_size (serving.md: for multi-profile engines
    only)."""
    config.dynamic_batching.SetInParent()  # present even when every field keeps its default
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us


def _python(name: str, mbs: int, count: int, options: RepositoryOptions, inputs, outputs,
            params: dict) -> mc.ModelConfig:
    config = model_config(name, mbs, inputs, outputs, params)
    config.backend = "python"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)
    _batching(config, options)
    return config


def _graph_model(name: str, spec: GraphSpec, mbs: int, export_dir: Path, manifest: dict, beta: str,
                 options: RepositoryOptions, runner: Path) -> ModelSpec:
    """prost_text / prost_video / prost_similarity in the chosen variant."""
    optional_beta = options.variant == "cpu"  # a python model can default BETA; ORT and TRT graphs need it fed
    inputs = [spec_tensor(t, mbs > 0, optional=optional_beta and t.name == P.BETA) for t in spec.inputs]
    outputs = [spec_tensor(t, mbs > 0) for t in spec.outputs]
    params = {P.BETA_PARAM: beta} if optional_beta and name == P.SIMILARITY_MODEL else {}
    graph_file = served_file(manifest, spec, options.precision)
    if name == P.VIDEO_MODEL:  # clients stamp the galleries they encode with it
        params[P.VIDEO_ENCODER_PARAM] = manifest["files"][graph_file]["sha256"]
    model = model_config(name, mbs, inputs, outputs, params)
    kind = mc.ModelInstanceGroup.KIND_CPU if options.variant == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    model.instance_group.add(kind=kind, count=options.instances)
    if name == P.TEXT_MODEL and options.variant != "cpu":
        model.response_cache.enable = True  # repeated queries skip the text encoder (see the module docstring)
    files = _onnx_files(export_dir, graph_file)
    if options.variant == "cpu":
        model.backend = "python"
        model.parameters[K.ONNX_FILE].string_value = "model.onnx"
        model.parameters[K.INTRA_OP_THREADS].string_value = str(options.intra_op_threads)
        if not mbs:  # prost_similarity: T x V grows with both counts; the ensembles never send more than this
            model.parameters[K.MAX_ITEMS].string_value = str(max(options.max_batch_size, options.max_video_batch_size))
        files["model.py"] = runner
    elif options.variant == "onnxruntime":
        model.backend = "onnxruntime"
        _trt_accelerator(model, spec, options, min(8, mbs) if mbs else 1, mbs or options.max_batch_size,
                         options.max_video_batch_size, manifest["files"][spec.onnx_file]["sha256"])
    else:
        model.platform = "tensorrt_plan"
        # the similarity graph's texts and videos dims share the profile: both must fit
        needed = mbs or max(options.max_batch_size, options.max_video_batch_size)
        if options.build_on_target:
            files[PLAN_FILE] = _plan_recipe(spec, manifest["files"][graph_file]["sha256"], needed, options)
        else:
            files = _plan_files(export_dir, manifest, spec, model, needed, options.tensorrt_version)
    if mbs:
        _batching(model, options)
    _warmup(model, spec, mbs)
    if options.build_on_target:  # served by ONNX Runtime until the image's start step puts a plan in place
        fallback = _onnxruntime_fallback(model)
        return ModelSpec(fallback, files, {TENSORRT_CONFIG: model, ONNXRUNTIME_CONFIG: fallback})
    return ModelSpec(model, files)


def _plan_recipe(spec: GraphSpec, onnx_sha256: str, needed: int, options: RepositoryOptions) -> bytes:
    """PLAN_FILE: what the serving image builds at start (prost_model_repository.plans): the graph, its ONNX
    sha256, the precision and one profile per input, from batch 1 (Triton's single requests and warmup) to `needed`."""
    batches = (1, min(8, needed), needed)
    shapes = {t.name: [[b if isinstance(d, str) else int(d) for d in t.shape] for b in batches] for t in spec.inputs}
    precision = "fp16" if options.fp16 else "fp32"
    return json.dumps({"graph": spec.name, "onnx_sha256": onnx_sha256, "precision": precision, "shapes": shapes},
                      indent=2).encode()


def _onnxruntime_fallback(model: mc.ModelConfig) -> mc.ModelConfig:
    """The same model on Triton's ONNX Runtime backend, on a GPU when there is one (the config a failed plan build
    falls back to)."""
    fallback = mc.ModelConfig()
    fallback.CopyFrom(model)
    fallback.ClearField("platform")
    fallback.backend = "onnxruntime"
    for group in fallback.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    return fallback


def _trt_accelerator(model: mc.ModelConfig, spec: GraphSpec, options: RepositoryOptions, opt: int, texts: int,
                     videos: int, onnx_sha256: str) -> None:
    """ORT's TensorRT execution provider: precision, engine/timing cache and one optimisation profile.

    The engine cache directory is keyed by the graph's content: ORT names cached engines by a hash of the graph's
    structure, not its weights, so a retrained export under one directory would load the old engine.

    FP16 risk: ORT-TRT can pin only LayerNorm to FP32 (trt_layer_norm_fp32_fallback); softmax and reductions (the
    final L2 norm included) run in FP16, and the engine is built on the server at load time, so no parity gate ever
    checks it (CLIP text embeddings are known to drift under ORT-TRT FP16, serving.md 4.5). The `tensorrt` variant
    with `prost build-engines --precision fp16` keeps those layers in FP32 and gates each engine.
    """
    def shapes(batch: int, other: int) -> str:
        # The batch dim (or the similarity graph's texts/videos dims) at `batch` / `other`; static dims as they are.
        def dim(d):
            return str(d) if isinstance(d, int) else str(other if d == "videos" else batch)
        return ",".join(f"{t.name}:{'x'.join(dim(d) for d in t.shape)}" for t in spec.inputs)

    accel = model.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    params = {"precision_mode": "FP16" if options.fp16 else "FP32", "max_workspace_size_bytes": str(2 << 30),
              "trt_engine_cache_enable": "1",
              "trt_engine_cache_path": f"{options.trt_cache_dir}/{model.name}-{onnx_sha256[:16]}",
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
    for t in spec.inputs:
        shape = t.shape[1:] if mbs else t.shape
        value = warm.inputs[t.name]
        value.data_type = DTYPES[t.dtype]
        value.dims.extend([1 if isinstance(d, str) else int(d) for d in shape])
        value.zero_data = True


def _onnx_files(export_dir: Path, graph_file: str) -> dict[str, Path]:
    """model.onnx plus its external-data file, which keeps its name (the graph refers to it)."""
    files: dict[str, Path] = {"model.onnx": export_dir / graph_file}
    data = export_dir / f"{graph_file}.data"
    if data.is_file():
        files[data.name] = data
    return files


def _plan_files(export_dir: Path, manifest: dict, spec: GraphSpec, model: mc.ModelConfig, needed: int,
                tensorrt_version: str) -> dict[str, Path]:
    """The plans `prost build-engines` listed for a graph, one `model.sm<cc>.plan` per compute capability mapped by
    `cc_model_filenames` (a GPU of another capability fails to load: there is no default model.plan). Refuses plans
    built from another ONNX file or (when given) another TensorRT version, changed plans, profiles whose min is above
    1 (Triton sends single requests and a batch-1 warmup), and profiles whose max is below the batch the config
    allows."""
    rebuild = f"rerun `prost build-engines --export {export_dir}` on each serving GPU"
    onnx_sha = manifest["files"][spec.onnx_file]["sha256"]
    entries = {key: e for key, e in manifest.get("engines", {}).items() if e.get("graph") == spec.name}
    stale = sorted(key for key, e in entries.items() if e.get("onnx_sha256") != onnx_sha)
    if stale:
        raise RepositoryError(f"TensorRT plans {', '.join(stale)} were built from another {spec.onnx_file} than the "
                              f"export's (onnx_sha256 differs); {rebuild}")
    if not entries:
        raise RepositoryError(f"no TensorRT plan for {spec.name} in {export_dir / 'manifest.json'}; {rebuild} first")
    files: dict[str, Path] = {}
    for key, entry in sorted(entries.items()):
        path, cc = export_dir / entry["file"], entry["compute_capability"]
        target = f"model.{arch_tag(cc)}.plan"
        if target in files:
            raise RepositoryError(f"two plans of {spec.name} for compute capability {cc}: {files[target].name} and "
                                  f"{path.name}; remove one from the manifest")
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise RepositoryError(f"{path} is missing or does not match its sha256 in the manifest; {rebuild}")
        if tensorrt_version != "any" and entry["tensorrt"] != tensorrt_version:
            raise RepositoryError(f"{path.name} was built with TensorRT {entry['tensorrt']}, but the serving Triton "
                                  f"has {tensorrt_version} (--tensorrt-version), and plans do not load across "
                                  f"versions; build the engines with TensorRT {tensorrt_version}")
        if entry["profile"]["min"] > 1:
            raise RepositoryError(f"{path.name}: TensorRT profile min {entry['profile']['min']}, but Triton sends "
                                  f"batches of 1 (single requests, the warmup); rebuild the engines with `prost build-engines`")
        if entry["profile"]["max"] < needed:
            raise RepositoryError(f"{model.name}: batches of {needed} exceed the TensorRT profile max "
                                  f"{entry['profile']['max']} of {path.name}; lower --max-batch-size/"
                                  f"--max-video-batch-size or rebuild the engines with a larger profile")
        files[target] = path
        model.cc_model_filenames[cc] = target
    return files


def _gallery_model(export_dir: Path, specs: dict[str, GraphSpec], beta: str, options: RepositoryOptions,
                   video_sha: str, repository: str, source: Path) -> ModelSpec:
    phrases, sentence = specs["text_prototypes"].outputs
    model = _python(P.GALLERY_MODEL, options.max_batch_size, 1, options,
                    [spec_tensor(phrases, batched=True), spec_tensor(sentence, batched=True),
                     tensor(P.TOP_K, "int32", [1], optional=True)],
                    search_results(specs),
                    {P.BETA_PARAM: beta, K.DEFAULT_TOP_K: P.DEFAULT_TOP_K, K.MAX_TOP_K: options.max_top_k,
                     K.BLOCK_ELEMENTS: DEFAULT_BLOCK_ELEMENTS, K.INTRA_OP_THREADS: options.intra_op_threads,
                     P.VIDEO_ENCODER_PARAM: video_sha, P.REPOSITORY_ID_PARAM: repository})
    graph = with_float16_inputs(export_dir / specs["similarity"].onnx_file, (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES))
    return ModelSpec(model, {G.MODEL_FILE: source, G.SIMILARITY_FILE: graph})


def _gallery_data(out: Path, model: mc.ModelConfig, specs: dict[str, GraphSpec]) -> dict[str, bytes | Path]:
    """The latest gallery's data files (hard-linked into the new version) when the video encoder that produced it is
    the new one, else an empty gallery (the caller holds the lock)."""
    encoder = model.parameters[P.VIDEO_ENCODER_PARAM].string_value
    model_dir = out / P.GALLERY_MODEL
    existing = G.versions(model_dir)
    if existing:
        latest = model_dir / str(existing[-1])
        try:
            stamp = version_stamp(latest)
            if stamp is None and _gallery_parameter(model_dir, P.VIDEO_ENCODER_PARAM) == encoder:  # written before galleries were stamped
                return _stamp_gallery(latest, encoder)
            if stamp == encoder:
                return data_files(latest)
            reason = "was encoded by another video encoder"
        except (OSError, ValueError, GalleryError) as exc:
            reason = f"cannot be read ({exc})"
        log.warning("%s: the gallery starts empty: its version %s %s; re-index with `prost-client index`",
                    P.GALLERY_MODEL, existing[-1], reason)
    objects, events = specs["video_prototypes"].outputs
    return G.gallery_files([], np.zeros((0, *objects.shape[1:]), np.float32),
                           np.zeros((0, *events.shape[1:]), np.float32), video_encoder=encoder)


def _gallery_parameter(model_dir: Path, key: str) -> str:
    """A parameter of the gallery's current config.pbtxt ("" without one)."""
    config_path = model_dir / "config.pbtxt"
    try:
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError):
        return ""
    return config.parameters[key].string_value


def _stamp_gallery(version_dir: Path, encoder: str) -> dict[str, bytes]:
    """The data files of an unstamped gallery version, stamped with `encoder`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(version_dir / G.TENSORS_FILE))
        ids = json.loads((version_dir / G.IDS_FILE).read_text())["video_ids"]
        return G.gallery_files(ids, tensors["objects"], tensors["events"], video_encoder=encoder)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise RepositoryError(f"{version_dir}: {type(exc).__name__}: {exc}") from None


def _read_export(export_dir: Path) -> dict:
    """The export manifest (read once per build), with every ONNX file present and matching its sha256."""
    try:
        manifest = read_manifest(export_dir)
    except ProstError as exc:
        raise RepositoryError(str(exc)) from exc
    for name in ("video_prototypes.onnx", "text_prototypes.onnx", "similarity.onnx"):
        entry = manifest.get("files", {}).get(name)
        path = export_dir / name
        if entry is None or not path.is_file():
            raise RepositoryError(f"{path} is missing from the export; run `prost export` again")
        if sha256_file(path) != entry["sha256"]:
            raise RepositoryError(f"{path} does not match the sha256 in {export_dir / 'manifest.json'}; "
                                  f"the export was modified, run `prost export` again")
    return manifest


def _write_model(model_dir: Path, spec: ModelSpec) -> int | None:
    """Write a new version when the config or the files differ from the latest version; returns it, or None.

    The caller holds the model's lock."""
    _drop_stale_alternatives(model_dir, spec)
    configs = {name: text_format.MessageToString(c) for name, c in {"config.pbtxt": spec.config,
                                                                     **spec.alternatives}.items()}
    for text in configs.values():
        text_format.Parse(text, mc.ModelConfig())  # the written text parses against Triton's schema
    files = {name: src if isinstance(src, bytes) else Path(src) for name, src in spec.files.items()}
    existing = G.versions(model_dir)
    # build on target: the start script picks config.pbtxt among the alternatives and adds the plan it built
    current = spec.alternatives or {"config.pbtxt": None}
    if existing and all((model_dir / n).is_file() and (model_dir / n).read_text() == configs[n] for n in current):
        latest = model_dir / str(existing[-1])
        present = sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts and p.name != SERVED_PLAN)
        if present == sorted(files) and all(_same(latest / n, src) for n, src in files.items()):
            return None
    version = storage.write_version(model_dir, files, locked=True)
    for name, text in configs.items():
        write_atomic(model_dir / name, text)
    return version


def _drop_stale_alternatives(model_dir: Path, spec: ModelSpec) -> None:
    """Remove the build-on-target configs of an earlier build that this one does not write (the start step would
    otherwise put the old TensorRT config back over the new config.pbtxt)."""
    for name in (TENSORRT_CONFIG, ONNXRUNTIME_CONFIG):
        if name not in spec.alternatives:
            (model_dir / name).unlink(missing_ok=True)


def _same(path: Path, src: Path | bytes) -> bool:
    if isinstance(src, bytes):
        return path.read_bytes() == src
    return path.stat().st_size == src.stat().st_size and sha256_file(path) == sha256_file(src)


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("repository", help="Triton model repositories")
    verbs = parser.add_subparsers(dest="repository_command", required=True, metavar="VERB")
    build = verbs.add_parser("build", help="write or update a versioned Triton repository from an export")
    build.add_argument("--export", required=True, type=Path, help="directory written by `prost export`")
    build.add_argument("--out", required=True, type=Path, help="repository directory (created or updated)")
    build.add_argument("--variant", choices=VARIANTS, default="cpu",
                       help="how the three graphs run: cpu (ONNX Runtime in python models), onnxruntime (Triton's ORT "
                            "backend with the TensorRT accelerator, GPU), tensorrt (plans from `prost build-engines`, "
                            "or built by the serving image at start with --build-on-target)")
    defaults = RepositoryOptions()
    for option in fields(RepositoryOptions):
        if option.name not in ("variant", "fp16", "tensorrt_version", "build_on_target"):
            value = getattr(defaults, option.name)
            build.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name, type=type(value),
                               default=value, help=option.metadata["help"])
    build.add_argument("--fp16", action="store_true", help=FP16_HELP)
    build.add_argument("--build-on-target", action="store_true", help=RepositoryOptions.__dataclass_fields__[
        "build_on_target"].metadata["help"])
    build.add_argument("--tensorrt-version", default="", help="tensorrt variant without --build-on-target (required): "
                       "the serving Triton's TensorRT version (e.g. 10.13.3.9); plans built with another are refused; "
                       "'any' skips the check")
    build.set_defaults(func=_build_cmd)


def _build_cmd(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in asdict(RepositoryOptions()) if name != "variant"}
    out = write_repository(args.export, args.out, args.variant, **options)
    manifest = storage.read_manifest(out)
    for name, entry in manifest["models"].items():
        print(f"{name:22s} versions {entry['versions']}")
    print(f"wrote {out}")
    return 0
