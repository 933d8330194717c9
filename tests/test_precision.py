"""Reduced-precision encoders (`prost export --precision`): the int8 graphs of a trained tiny model pass their gate
(cosine per prototype and retrieval on decoded synthetic videos), a broken int8 graph fails it, bf16 is refused by
this ONNX Runtime, and a cpu repository serves the int8 graphs with the video encoder stamp of the int8 file."""

from __future__ import annotations

import json
import shutil

import pytest

import prost
from prost.errors import ExportError, ParityError, RepositoryError
from prost.fileio import sha256_file
from prost_cli.main import main
from prost_client import protocol as P
from prost_export.onnx import export_onnx
from prost_export.precision import bf16_problem, check_precision, export_precision, quantize_int8
from prost_model_repository.writer import write_repository


@pytest.fixture(scope="module")
def int8_export(trained_run, tmp_path_factory):
    """`prost export --precision int8 --data` of the trained tiny model."""
    run, data = trained_run
    out = tmp_path_factory.mktemp("int8") / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--precision", "int8", "--data", str(data),
                 "--max-videos", "60"]) == 0
    return out


def test_int8_encoders_pass_the_cosine_and_retrieval_gates(int8_export):
    manifest = json.loads((int8_export / "manifest.json").read_text())
    entry = manifest["precisions"]["int8"]
    assert entry["graphs"] == {"video_prototypes": "video_prototypes.int8.onnx",
                               "text_prototypes": "text_prototypes.int8.onnx"}
    gate = entry["gate"]
    assert min(gate["min_cosine"].values()) >= 0.99
    fp32, int8 = gate["retrieval"]["fp32"], gate["retrieval"]["int8"]
    assert fp32["R@5"] > 20  # a trained model: the recall bound means something
    assert all(abs(fp32[k] - int8[k]) <= 0.5 for k in ("R@1", "R@5", "R@10"))
    for name in entry["graphs"].values():
        assert manifest["files"][name]["sha256"] == sha256_file(int8_export / name)


def test_a_broken_int8_graph_fails_its_gate(int8_export, tmp_path):
    """The int8 video graph of another model's weights in place of this one's: the cosine gate names it."""
    broken = tmp_path / "export"
    shutil.copytree(int8_export, broken)
    other = export_onnx(prost.create_model("tiny", seed=5), tmp_path / "other", parity=False)
    quantize_int8(other / "video_prototypes.onnx", broken / "video_prototypes.int8.onnx")
    config = prost.ProstConfig.from_dict(json.loads((broken / "manifest.json").read_text())["config"])
    with pytest.raises(ParityError, match=r"(OBJECT|EVENT)_PROTOTYPES.*min cosine .*\(bound 0.99\)"):
        check_precision(broken, config, "int8")


def test_bf16_is_refused_by_onnx_runtimes_cpu_provider(int8_export, caplog):
    problem = bf16_problem()
    assert problem and "cannot run bf16 graphs" in problem and "--precision int8" in problem
    assert export_precision(int8_export, "bf16") is None
    assert "bf16" not in json.loads((int8_export / "manifest.json").read_text())["precisions"]


def test_cpu_repository_serves_the_int8_encoders(int8_export, onnx_dir, tmp_path):
    repo = write_repository(int8_export, tmp_path / "repo", precision="int8")
    manifest = json.loads((int8_export / "manifest.json").read_text())
    for model, graph in ((P.TEXT_MODEL, "text_prototypes"), (P.VIDEO_MODEL, "video_prototypes")):
        served = repo / model / "1" / "model.onnx"
        assert sha256_file(served) == manifest["files"][f"{graph}.int8.onnx"]["sha256"]
    video_config = (repo / P.VIDEO_MODEL / "config.pbtxt").read_text()
    assert manifest["files"]["video_prototypes.int8.onnx"]["sha256"] in video_config  # galleries stamped by int8
    assert json.loads((repo / "manifest.json").read_text())["precision"] == "int8"
    with pytest.raises(RepositoryError, match="use --variant cpu"):
        write_repository(int8_export, tmp_path / "gpu", "onnxruntime", precision="int8")
    with pytest.raises(ExportError, match="run `prost export --precision int8`"):
        write_repository(onnx_dir, tmp_path / "plain", precision="int8")
