"""TensorRT engines: built and gated where a GPU and TensorRT exist; a clear refusal everywhere else."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import prost
from prost.errors import ExportError
from prost_export.onnx import export_onnx
from prost_export.specs import graph_specs
from prost_export.tensorrt import plan_name, timing_cache_name

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(not (HAS_TRT and HAS_GPU), reason="needs an NVIDIA GPU and `pip install 'prost-serve[gpu]'`"
                               f" (tensorrt installed: {HAS_TRT}, CUDA GPU visible: {HAS_GPU})")


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
    assert (tiny_export / timing_cache_name(meta["compute_capability"])).stat().st_size > 0


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
