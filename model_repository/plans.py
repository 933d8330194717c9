"""Build on target: the serving image builds its TensorRT plans at start, with the TensorRT inside it, for the GPU
it finds (`docker/triton-entrypoint.sh` runs `python3 -m prost_model_repository.plans` before tritonserver).

`prost repository build --variant tensorrt --build-on-target` writes, for each graph model, the ONNX graph and
PLAN_FILE (graph, ONNX sha256, precision, input shapes) in the version directory instead of a plan, and two configs
beside config.pbtxt: TENSORRT_CONFIG (platform tensorrt_plan, `model.plan`) and ONNXRUNTIME_CONFIG (the same model on
Triton's ONNX Runtime backend), which config.pbtxt starts as, so a server started without this step still loads it.
At each start, per model whose latest version (the one Triton serves) carries a recipe:
  - the plan's key is the ONNX sha256, precision, shapes, TensorRT version and compute capability: a plan under that
    key in the cache folder (a volume) is reused, otherwise it is built there, with the timing cache kept beside it
    (keyed by compute capability, TensorRT and CUDA versions); the plan is then copied in as `model.plan`;
  - config.pbtxt becomes TENSORRT_CONFIG, or, when anything fails (no tensorrt module, no GPU, GPUs of several compute
    capabilities, a build error), ONNXRUNTIME_CONFIG, with one log line saying why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prost.errors import ProstError
from prost_client import gallery_format as G
from prost_export.specs import arch_tag
from prost_export.trt_build import build_plan, tensorrt_module, timing_cache_name

log = logging.getLogger("prost-plans")

PLAN_FILE = "plan.json"
TENSORRT_CONFIG, ONNXRUNTIME_CONFIG = "config.tensorrt.pbtxt", "config.onnxruntime.pbtxt"
SERVED_PLAN = "model.plan"


class TargetError(ProstError):
    """This host cannot build plans (why is the message); its models serve with ONNX Runtime instead."""


@dataclass(frozen=True)
class Target:
    """What a plan is tied to: the TensorRT that builds and serves it and the GPU architecture it runs on."""

    tensorrt: str
    cuda: str
    compute_capability: str
    gpu: str


def detect_target(query: Callable[[], str] | None = None, tensorrt_version: Callable[[], str] | None = None) -> Target:
    """The GPUs' name and compute capability (nvidia-smi; all must share one), TensorRT's version (the importable
    module: the image installs the bindings of the TensorRT its Triton links), CUDA's version (NGC's CUDA_VERSION).
    TargetError says which is missing."""
    try:
        listing = (query or _nvidia_smi)()
    except (OSError, subprocess.SubprocessError) as exc:
        raise TargetError(f"no GPU visible (nvidia-smi: {exc}); run the container with --gpus") from None
    gpus = [tuple(part.strip() for part in line.rsplit(",", 1)) for line in listing.splitlines() if line.strip()]
    if not gpus:
        raise TargetError("no GPU visible (nvidia-smi lists none); run the container with --gpus")
    capabilities = sorted({cc for _, cc in gpus})
    if len(capabilities) > 1:
        raise TargetError(f"GPUs of several compute capabilities ({', '.join(capabilities)}): one plan per model "
                          f"cannot serve them all; give the container GPUs of one kind")
    try:
        version = (tensorrt_version or (lambda: tensorrt_module().__version__))()
    except ProstError as exc:
        raise TargetError(str(exc)) from None
    return Target(version, os.environ.get("CUDA_VERSION", "unknown"), capabilities[0], gpus[0][0])


def _nvidia_smi() -> str:
    return subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def plan_key(entry: dict, target: Target) -> str:
    """The cache file name of a plan: `<graph>.<hash of ONNX sha256, precision, shapes>.trt<v>.sm<cc>.plan`."""
    recipe = json.dumps({k: entry[k] for k in ("onnx_sha256", "precision", "shapes")}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return f"{entry['graph']}.{digest}.trt{target.tensorrt}.{arch_tag(target.compute_capability)}.plan"


def prepare_version(version: Path, cache: Path, target: Target, build: Callable = build_plan) -> str:
    """Put the plan of one version directory in place, from the cache or built into it; returns "cached" or
    "built". ProstError (from the build) when it cannot."""
    entry = json.loads((version / PLAN_FILE).read_text())
    cached = cache / plan_key(entry, target)
    outcome = "cached"
    if not cached.is_file():
        shapes = {name: tuple(tuple(s) for s in triple) for name, triple in entry["shapes"].items()}
        partial = cached.with_suffix(f".{os.getpid()}.partial")  # containers sharing the volume build apart
        seconds = build(version / "model.onnx", partial, shapes, precision=entry["precision"],
                        timing_cache=cache / timing_cache_name(target.compute_capability, target.tensorrt,
                                                               target.cuda))
        os.replace(partial, cached)  # a build that died midway never leaves a plan under the key
        log.info("built %s in %.0f s", cached.name, seconds)
        outcome = "built"
    shutil.copyfile(cached, version / SERVED_PLAN)
    return outcome


def prepare(repository: Path, cache: Path, detect: Callable[[], Target] = detect_target,
            build: Callable = build_plan) -> dict[str, str]:
    """Every build-on-target model of `repository` whose latest version carries a plan recipe: its plan in place and
    config.pbtxt its TensorRT config, or its ONNX Runtime config with the reason logged; nothing here stops the
    server from starting. Returns {model: "built" | "cached" | "onnxruntime: <why>"}."""
    latest = {}  # model -> the version Triton's default policy serves, when it carries a recipe
    for model in (p.parent for p in sorted(Path(repository).glob(f"*/{TENSORRT_CONFIG}"))):
        numbers = G.versions(model)
        if numbers and (model / str(numbers[-1]) / PLAN_FILE).is_file():
            latest[model] = model / str(numbers[-1])
    models = list(latest)
    if not models:
        return {}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        target = detect()
    except Exception as exc:  # noqa: BLE001 - TargetError, an unwritable cache, or anything else: serve with ORT
        return {model.name: _fall_back(model, str(exc)) for model in models}
    outcomes = {}
    for model in models:
        try:  # TensorRT's bindings raise their own types (TypeError, RuntimeError) besides ours
            outcomes[model.name] = prepare_version(latest[model], cache, target, build)
        except Exception as exc:  # noqa: BLE001 - one model's failure falls back that model alone
            outcomes[model.name] = _fall_back(model, f"building its plan failed: {exc}")
            continue
        shutil.copyfile(model / TENSORRT_CONFIG, model / "config.pbtxt")
        log.info("%s: TensorRT %s plan for %s (sm %s), %s", model.name, target.tensorrt, target.gpu,
                 target.compute_capability, outcomes[model.name])
    return outcomes


def _fall_back(model: Path, reason: str) -> str:
    shutil.copyfile(model / ONNXRUNTIME_CONFIG, model / "config.pbtxt")
    log.warning("%s: serving with ONNX Runtime instead of TensorRT: %s", model.name, reason)
    return f"onnxruntime: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prost_model_repository.plans", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="the model repository Triton will serve")
    parser.add_argument("--cache", type=Path, required=True, help="plan and timing cache folder (a volume)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="prost-plans: %(message)s")
    if not os.access(args.repository, os.W_OK):
        print(f"prost-plans: {args.repository} is read-only; build-on-target writes each plan and the config it "
              f"chooses there: mount the repository writable", file=sys.stderr)
        return 2
    try:
        prepare(args.repository, args.cache)
    except Exception:  # noqa: BLE001 - logged; the models keep the ONNX Runtime configs they were written with
        log.exception("preparing the plans failed; the models serve with the configs they have")
    return 0  # a model that could not get a plan serves with ONNX Runtime: the server starts either way


if __name__ == "__main__":
    raise SystemExit(main())
