"""TensorRT engines: built and gated where a GPU and TensorRT exist; a clear refusal everywhere else."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prost
from prost.errors import ExportError
from prost_export.onnx import export_onnx
from prost_export.specs import graph_specs
from prost_export.tensorrt import plan_name
from prost_export.trt_build import fp16_pinned_layers, load_timing_cache, timing_cache_name

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()
REQUIRE_GPU = os.environ.get("PROST_REQUIRE_GPU") == "1"  # scripts/gpu_check.sh: fail, never skip
NEEDS_GPU = pytest.mark.skipif(not (HAS_TRT and HAS_GPU) and not REQUIRE_GPU,
                               reason="needs an NVIDIA GPU and `pip install 'prost-serve[gpu]'` (tensorrt installed: "
                                      f"{HAS_TRT}, CUDA GPU visible: {HAS_GPU}); PROST_REQUIRE_GPU=1 fails instead")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return export_onnx(prost.create_model("tiny", seed=0), tmp_path_factory.mktemp("trt"))


def test_plan_names_carry_the_compute_capability():
    spec = graph_specs(prost.create_model("tiny").config)["video_prototypes"]
    assert plan_name(spec, "9.0") == "video_prototypes.sm90.plan"


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="this host can build engines; the refusal path does not apply")
def test_build_engines_refuses_clearly_without_gpu_or_tensorrt(tiny_export, capsys):
    from prost_cli.main import main

    assert main(["build-engines", "--export", str(tiny_export)]) == 1
    err = capsys.readouterr().err
    assert "prost-serve[gpu]" in err or "no CUDA GPU" in err


@pytest.mark.gpu
@NEEDS_GPU
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_pass_the_gate_and_record_metadata(tiny_export, precision):
    from prost_export.tensorrt import Profile, build_engines

    engines = build_engines(tiny_export, precision=precision, profile=Profile(1, 2, 4))
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    for name, meta in engines.items():
        assert (tiny_export / meta["file"]).is_file() and manifest["engines"][meta["file"]]["sha256"] == meta["sha256"]
        assert meta["graph"] == name and meta["precision"] == precision
        assert meta["profile"] == {"min": 1, "opt": 2, "max": 4}
        assert {"tensorrt", "gpu", "compute_capability"} <= set(meta)
    assert {"tensorrt", "cuda", "gpu", "compute_capability"} <= set(meta)
    cache = tiny_export / timing_cache_name(meta["compute_capability"], meta["tensorrt"], meta["cuda"])
    assert cache.stat().st_size > 0


@pytest.mark.gpu
@NEEDS_GPU
def test_a_corrupt_timing_cache_is_discarded_and_the_build_goes_on(tiny_export, tmp_path, caplog):
    from prost_export.tensorrt import Profile, build_engines

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache" * 64)
    with caplog.at_level(logging.WARNING):
        build_engines(tiny_export, precision="fp32", profile=Profile(1, 1, 2), timing_cache=cache)
    assert "is damaged or was made by another TensorRT" in caplog.text


@pytest.mark.gpu
@NEEDS_GPU
def test_retrieval_gate_feeds_a_split_larger_than_the_profile(tiny_export, tmp_path):
    """12 test videos through engines whose profile stops at 4: the gate chunks every graph's batch."""
    from prost.data.synthetic import generate
    from prost_export.tensorrt import Profile, build_engines

    data = generate(tmp_path / "synth", videos=60, seed=3)  # 20 families, 4 of them test: 12 videos
    engines = build_engines(tiny_export, precision="fp32", profile=Profile(1, 2, 4), data=data)
    assert set(engines) == set(graph_specs(prost.create_model("tiny").config))


@pytest.mark.gpu
@NEEDS_GPU
def test_engine_refuses_a_batch_outside_its_profile_and_a_wrong_dtype(tiny_export):
    from prost_export.graphs import example_inputs
    from prost_export.tensorrt import EngineRunner, Profile, build_engines

    meta = build_engines(tiny_export, precision="fp32", profile=Profile(1, 1, 2))["text_prototypes"]
    runner = EngineRunner(tiny_export / meta["file"], meta)
    spec = graph_specs(prost.create_model("tiny").config)["text_prototypes"]
    with pytest.raises(ExportError, match="outside the engine's optimization profile"):
        runner(example_inputs(spec, batch=3))
    with pytest.raises(ExportError, match="the engine takes int32"):
        runner({name: value.astype("int64") for name, value in example_inputs(spec, batch=1).items()})


@pytest.mark.gpu
@NEEDS_GPU
def test_engine_for_another_gpu_is_refused(tiny_export):
    from prost_export.tensorrt import EngineRunner, Profile, build_engines

    engines = build_engines(tiny_export, precision="fp32", profile=Profile(1, 1, 2))
    meta = dict(engines["text_prototypes"], compute_capability="1.0")
    with pytest.raises(ExportError, match="Rebuild here: prost build-engines"):
        EngineRunner(tiny_export / meta["file"], meta)


def test_timing_caches_are_keyed_by_gpu_tensorrt_and_cuda():
    names = {timing_cache_name(cc, trt, cuda) for cc in ("8.0", "9.0") for trt in ("10.13.3", "10.16.1.11")
             for cuda in ("12.9", "13.0")}
    assert len(names) == 8 and "timing.sm90.trt10.16.1.11.cuda13.0.cache" in names


class _BuilderConfig:
    """Stand-in for TensorRT's IBuilderConfig timing-cache calls (TensorRT is not installed here): bytes that are
    not a cache deserialise to None, as TensorRT's Python bindings return."""

    def __init__(self):
        self.cache = None

    def create_timing_cache(self, data: bytes):
        return None if data and not data.startswith(b"TRTCACHE") else ("cache", data)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True


def test_a_timing_cache_that_does_not_deserialise_is_discarded_with_a_warning(tmp_path, caplog):
    good, bad = tmp_path / "good.cache", tmp_path / "bad.cache"
    good.write_bytes(b"TRTCACHE entries")
    bad.write_bytes(b"\x00garbage")
    config = _BuilderConfig()
    assert load_timing_cache(config, good) == ("cache", b"TRTCACHE entries") == config.cache
    with caplog.at_level(logging.WARNING):
        assert load_timing_cache(config, bad) == ("cache", b"") == config.cache
    assert "bad.cache is damaged or was made by another TensorRT" in caplog.text
    assert load_timing_cache(config, tmp_path / "missing.cache") == ("cache", b"")


# Engine information as IEngineInspector prints it with ProfilingVerbosity.DETAILED (TensorRT 10 JSON schema).
INSPECTOR_JSON = json.dumps({"Layers": [
    {"Name": "/clip/ln_1/LayerNormalization + /clip/attn/MatMul", "LayerType": "Myelin",
     "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [2, 50, 128],
                 "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [2, 50, 128],
                  "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "/head/Softmax", "LayerType": "SoftMax",
     "Outputs": [{"Name": "p", "Format/Datatype": "Row major linear FP32 format"}]},
    {"Name": "{ForeignNode[/head/ReduceSum.../head/Div]}", "LayerType": "Myelin",
     "Outputs": [{"Name": "n", "Format/Datatype": "Row major linear Half format"}]},
    {"Name": "/clip/mlp/fc", "LayerType": "gemm", "Outputs": [{"Name": "h", "Format/Datatype": "Half"}]},
], "Bindings": ["FRAMES", "OBJECT_PROTOTYPES"]})


def test_the_fp16_pin_check_finds_pinned_layers_that_run_in_half():
    pinned = {"/clip/ln_1/LayerNormalization", "/head/Softmax", "/head/ReduceSum", "/head/Sqrt"}
    assert fp16_pinned_layers(INSPECTOR_JSON, pinned) == [
        "/clip/ln_1/LayerNormalization + /clip/attn/MatMul", "{ForeignNode[/head/ReduceSum.../head/Div]}"]
    assert fp16_pinned_layers(INSPECTOR_JSON, {"/head/Softmax"}) == []  # kept in fp32
    with pytest.raises(ExportError, match="DETAILED"):
        fp16_pinned_layers(json.dumps({"Layers": ["/head/Softmax"]}), pinned)  # LAYER_NAMES_ONLY
    with pytest.raises(ExportError, match="cannot read"):
        fp16_pinned_layers("not json", pinned)


def test_both_builds_of_a_cpu_gpu_package_installed_are_refused_with_the_fix():
    from importlib.metadata import PackageNotFoundError

    from prost_cli.main import extras_conflict

    def installed(versions: dict[str, str]):
        def version(name: str) -> str:
            if name not in versions:
                raise PackageNotFoundError(name)
            return versions[name]
        return version

    message = extras_conflict(installed({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}))
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu==1.31.1" in message
    assert extras_conflict(installed({"onnxruntime": "1.32.0"})) is None
    assert extras_conflict(installed({"onnxruntime-gpu": "1.31.1"})) is None
    message = extras_conflict(installed({"onnxruntime": "1.32.0", "faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.12.0"}))
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu-cu12==1.12.0" in message
    assert extras_conflict() is None  # this environment is consistent, so `prost` starts


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="this host has the GPU path; the preflight would pass")
def test_the_gpu_check_fails_loudly_without_a_gpu():
    """scripts/gpu_check.sh must not pass by skipping: its preflight names each missing piece and exits non-zero
    before any test runs."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode != 0
    failed = [line for line in result.stderr.splitlines() if line.startswith("gpu preflight: FAILED: ")]
    if not HAS_TRT:
        assert any("tensorrt is not importable" in line for line in failed), result.stderr
    if not HAS_GPU:
        assert any("CUDA is not available" in line for line in failed), result.stderr
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert any("CUDAExecutionProvider" in line for line in failed), result.stderr
    assert "passed" not in result.stdout and "the GPU check did not run" in result.stderr
