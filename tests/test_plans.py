"""Build on target (prost_model_repository.plans) on a CPU: a build-on-target repository holds each graph with its
plan recipe and both configs; without TensorRT or a GPU every model falls back to ONNX Runtime, saying why; plans are
cached by ONNX content, precision, shapes, TensorRT version and compute capability, built once per key, and a failed
build falls back for that model only. The build itself (TensorRT) runs where a GPU is: scripts/gpu_check.sh."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import prost
from prost.errors import ExportError, RepositoryError
from prost_client import protocol as P
from prost_export.onnx import export_onnx
from prost_model_repository import plans
from prost_model_repository.plans import ONNXRUNTIME_CONFIG, PLAN_FILE, TENSORRT_CONFIG, Target, TargetError
from prost_model_repository.writer import write_repository

GRAPH_MODELS = (P.TEXT_MODEL, P.VIDEO_MODEL, P.SIMILARITY_MODEL)
H100 = Target("10.13.3.9", "13.0.2", "9.0", "NVIDIA H100")


def config(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def serves(model_dir, alternative: str) -> bool:
    """Whether config.pbtxt is the named alternative config."""
    return (model_dir / "config.pbtxt").read_text() == (model_dir / alternative).read_text()


@pytest.fixture
def repository(onnx_dir, tmp_path):
    return write_repository(onnx_dir, tmp_path / "repo", "tensorrt", build_on_target=True)


class StandIn:
    """Stands in for TensorRT's builder (not ours, and absent here): writes a plan named after its graph."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, onnx_path, plan_path, shapes, *, precision, timing_cache):
        self.calls.append(onnx_path.parent.parent.name)
        if self.fail and self.fail == onnx_path.parent.parent.name:
            raise ExportError("TensorRT failed to build an engine for model.onnx")
        plan_path.write_bytes(f"plan of {onnx_path.parent.parent.name} {precision} {sorted(shapes)}".encode())
        return 1.0


def test_a_build_on_target_repository_holds_graphs_recipes_and_both_configs(repository, onnx_dir):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    for model in GRAPH_MODELS:
        version = repository / model / "1"
        recipe = json.loads((version / PLAN_FILE).read_text())
        assert recipe["onnx_sha256"] == manifest["files"][recipe["graph"] + ".onnx"]["sha256"]
        assert recipe["precision"] == "fp32" and (version / "model.onnx").is_file()
        for low, opt, high in recipe["shapes"].values():
            assert low[0] == 1 and low[0] <= opt[0] <= high[0]  # Triton sends single requests
        trt, ort = config(repository / model / TENSORRT_CONFIG), config(repository / model / ONNXRUNTIME_CONFIG)
        assert trt.platform == "tensorrt_plan" and not trt.default_model_filename
        assert ort.backend == "onnxruntime" and ort.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
        assert [i.name for i in trt.input] == [i.name for i in ort.input]
        assert serves(repository / model, ONNXRUNTIME_CONFIG)  # until the start step puts a plan in place
    with pytest.raises(RepositoryError, match="--build-on-target builds TensorRT plans"):
        write_repository(onnx_dir, repository.parent / "cpu", "cpu", build_on_target=True)


def test_a_rebuild_without_build_on_target_leaves_no_alternative_behind(repository, onnx_dir, tmp_path):
    """Otherwise the start step would put the old TensorRT config back over the new config.pbtxt."""
    write_repository(onnx_dir, repository, "cpu")
    for model in GRAPH_MODELS:
        assert not list((repository / model).glob("config.*.pbtxt"))
        assert config(repository / model / "config.pbtxt").backend == "python"
    assert plans.prepare(repository, tmp_path / "cache", lambda: H100, StandIn()) == {}


def test_without_tensorrt_every_model_serves_with_onnxruntime_saying_why(repository, tmp_path, caplog):
    """This machine has no tensorrt module and no GPU: the real detection says so."""
    outcomes = plans.prepare(repository, tmp_path / "cache")
    assert set(outcomes) == set(GRAPH_MODELS)
    for model, outcome in outcomes.items():
        assert outcome.startswith("onnxruntime: ")
        assert serves(repository / model, ONNXRUNTIME_CONFIG)
    assert "serving with ONNX Runtime instead of TensorRT" in caplog.text
    assert ("no GPU visible" in caplog.text) or ("TensorRT is not installed" in caplog.text)


def test_plans_are_cached_by_content_and_target_and_a_failed_build_falls_back_alone(repository, onnx_dir,
                                                                                   tmp_path):
    cache, build = tmp_path / "cache", StandIn()
    assert plans.prepare(repository, cache, lambda: H100, build) == dict.fromkeys(GRAPH_MODELS, "built")
    for model in GRAPH_MODELS:
        assert (repository / model / "1" / "model.plan").read_bytes().startswith(f"plan of {model}".encode())
        assert serves(repository / model, TENSORRT_CONFIG)
    assert len(list(cache.glob("*.plan"))) == 3 and not list(cache.glob("*.partial"))

    build.calls.clear()  # a restart: every plan from the cache
    assert plans.prepare(repository, cache, lambda: H100, build) == dict.fromkeys(GRAPH_MODELS, "cached")
    assert build.calls == []
    other_gpu = Target(H100.tensorrt, H100.cuda, "8.9", "NVIDIA L4")
    assert plans.prepare(repository, cache, lambda: other_gpu, build) == dict.fromkeys(GRAPH_MODELS, "built")

    # a retrained export (same graphs, other weights) gets new keys, however the graph's structure matches
    retrained = export_onnx(prost.create_model("tiny", seed=7), tmp_path / "retrained", parity=False)
    write_repository(retrained, repository, "tensorrt", build_on_target=True)
    build = StandIn(fail=P.VIDEO_MODEL)
    outcomes = plans.prepare(repository, cache, lambda: H100, build)
    assert outcomes[P.TEXT_MODEL] == "built" and outcomes[P.SIMILARITY_MODEL] == "cached"  # no weights: same graph
    assert sorted(build.calls) == [P.TEXT_MODEL, P.VIDEO_MODEL]  # the versions Triton serves only, not version 1
    assert (repository / P.TEXT_MODEL / "2" / "model.plan").is_file()
    assert outcomes[P.VIDEO_MODEL] == "onnxruntime: building its plan failed: TensorRT failed to build an engine " \
                                      "for model.onnx"
    assert serves(repository / P.VIDEO_MODEL, ONNXRUNTIME_CONFIG)


def test_target_detection_names_what_is_missing():
    version = lambda: "10.13.3.9"  # noqa: E731
    assert plans.detect_target(lambda: "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA H100 80GB HBM3, 9.0\n", version) == \
        Target("10.13.3.9", os.environ.get("CUDA_VERSION", "unknown"), "9.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(TargetError, match=r"several compute capabilities \(8.9, 9.0\)"):
        plans.detect_target(lambda: "NVIDIA H100, 9.0\nNVIDIA L4, 8.9\n", version)
    with pytest.raises(TargetError, match="no GPU visible"):
        plans.detect_target(lambda: "", version)

    def missing() -> str:
        raise FileNotFoundError("nvidia-smi")

    with pytest.raises(TargetError, match="no GPU visible .*--gpus"):
        plans.detect_target(missing, version)
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(TargetError, match="no GPU visible"):
            plans.detect_target()

