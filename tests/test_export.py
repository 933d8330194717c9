"""ONNX export: graph signatures, hygiene, parity gates (tiny and vit-b-32), manifest and external data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import prost
from prost.errors import ExportError, ParityError
from prost.fileio import sha256_file as sha256
from prost_client import protocol as p
from prost_export.graphs import EncoderGraph, example_inputs
from prost_export.onnx import check_graph, export_graph, export_onnx
from prost_export.parity import check_random_parity, compare, onnx_session, run_onnx, run_torch
from prost_export.specs import GraphSpec, TensorSpec, graph_specs


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = prost.create_model("tiny", seed=0)
    return model, export_onnx(model, tmp_path_factory.mktemp("export"))


def test_graph_signatures_use_the_triton_names(tiny_export):
    model, out = tiny_export
    cfg, h = model.config, model.config.head
    expected = {
        "video_prototypes.onnx": ({p.FRAMES: ["batch", h.num_frames, 3, 64, 64]},
                                  {p.OBJECT_PROTOTYPES: ["batch", h.num_frames, h.num_objects, cfg.embed_dim],
                                   p.EVENT_PROTOTYPES: ["batch", h.num_events, cfg.embed_dim]}),
        "text_prototypes.onnx": ({p.TOKEN_IDS: ["batch", cfg.max_words]},
                                 {p.PHRASE_PROTOTYPES: ["batch", h.num_phrases, cfg.embed_dim],
                                  p.SENTENCE_EMBEDDING: ["batch", cfg.embed_dim]}),
    }
    for name, (inputs, outputs) in expected.items():
        graph = onnx.load(str(out / name)).graph
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        assert {i.name: dims(i) for i in graph.input} == inputs
        assert {o.name: dims(o) for o in graph.output} == outputs
    ids = onnx.load(str(out / "text_prototypes.onnx")).graph.input[0]
    assert ids.type.tensor_type.elem_type == TensorProto.INT32
    sim = onnx.load(str(out / "similarity.onnx")).graph
    assert [i.name for i in sim.input] == [p.PHRASE_PROTOTYPES, p.SENTENCE_EMBEDDING, p.OBJECT_PROTOTYPES,
                                           p.EVENT_PROTOTYPES, p.BETA]
    assert [o.name for o in sim.output] == [p.SIMILARITY, p.S_ES, p.S_OP]
    assert not sim.initializer or all(np.prod(t.dims) <= 1 for t in sim.initializer)  # weight-free


def test_manifest_records_config_versions_and_checksums(tiny_export):
    model, out = tiny_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == model.config.to_dict()
    assert manifest["opset"] >= 17 and "dynamo=False" in manifest["exporter"]
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"}
    for name in ("video_prototypes.onnx", "text_prototypes.onnx", "similarity.onnx"):
        assert manifest["files"][name]["sha256"] == sha256(out / name)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_parity_on_fresh_inputs_at_any_batch(tiny_export, batch):
    model, out = tiny_export
    report = check_random_parity(model, out, batch=batch, seed=100 + batch)
    assert {r.name for r in report.rows} == {p.OBJECT_PROTOTYPES, p.EVENT_PROTOTYPES, p.PHRASE_PROTOTYPES,
                                             p.SENTENCE_EMBEDDING, p.SIMILARITY, p.S_ES, p.S_OP}
    assert all(r.max_abs <= 1e-4 and r.min_cosine >= 0.9999 for r in report.rows)


def test_similarity_graph_takes_beta_as_input(tiny_export):
    model, out = tiny_export
    spec = graph_specs(model.config)["similarity"]
    session = onnx_session(out / spec.onnx_file)
    inputs = example_inputs(spec, batch=3, seed=7)
    for beta in (0.0, 1.5):
        got = run_onnx(session, {**inputs, p.BETA: np.array([beta], np.float32)})
        np.testing.assert_allclose(got[p.SIMILARITY], got[p.S_ES] + beta * got[p.S_OP], atol=1e-6)


def test_parity_gate_reports_the_worst_tensor(tiny_export):
    model, out = tiny_export
    spec = graph_specs(model.config)["text_prototypes"]
    inputs = example_inputs(spec, batch=2, seed=3)
    reference = run_torch(model, "text_prototypes", inputs)
    broken = dict(reference)
    broken[p.SENTENCE_EMBEDDING] = reference[p.SENTENCE_EMBEDDING] + 1e-3
    with pytest.raises(ParityError, match="worst SENTENCE_EMBEDDING: max abs error 1.000e-03"):
        compare(reference, broken)


def test_hygiene_rejects_ops_tensorrt_lacks(tmp_path):
    node = helper.make_node("Unique", ["X"], ["Y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n"])])
    path = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = GraphSpec("unique", (TensorSpec("X", "float32", (4,)),), (TensorSpec("Y", "float32", ("n",)),))
    with pytest.raises(ExportError, match="Unique"):
        check_graph(path, spec)


@pytest.mark.parametrize("declared", [[None, None], ["b", 4]], ids=["undeclared", "declared-but-not-inferable"])
def test_hygiene_rejects_unknown_output_shapes(tmp_path, declared):
    node = helper.make_node("Reshape", ["X", "S"], ["Y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4]),
                                            helper.make_tensor_value_info("S", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, declared)])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = GraphSpec("reshape", (TensorSpec("X", "float32", ("b", 4)),), (TensorSpec("Y", "float32", ("b", 4)),))
    with pytest.raises(ExportError, match="output Y has shape"):
        check_graph(path, spec)


def test_large_graphs_use_external_data(tiny_export, tmp_path):
    model, _ = tiny_export
    spec = graph_specs(model.config)["text_prototypes"]
    path = export_graph(EncoderGraph(model, "text"), spec, tmp_path / spec.onnx_file, external_data_bytes=1)
    assert (tmp_path / f"{spec.onnx_file}.data").stat().st_size > 1_000_000
    assert path.stat().st_size < 1_000_000
    inputs = example_inputs(spec, batch=2, seed=9)
    compare(run_torch(model, "text_prototypes", inputs), run_onnx(onnx_session(path), inputs))


def test_caption_phrase_tokens_export_within_the_gate(tmp_path):
    """The paper's phrase pooling (a mask from the ids, no data-dependent shapes) passes the parity gate."""
    from prost.factory import preset_config

    model = prost.create_model(preset_config("tiny").replace(**{"head.phrase_tokens": "caption"}), seed=3)
    out = export_onnx(model, tmp_path, parity_batches=(1, 3))  # raises ParityError past the gate
    text = onnx.load(str(out / "text_prototypes.onnx")).graph
    assert "ArgMax" not in {node.op_type for node in text.node}
    inputs = example_inputs(graph_specs(model.config)["text_prototypes"], batch=2, seed=4)
    official = prost.create_model("tiny", seed=3)
    official.load_state_dict(model.state_dict())
    served = run_onnx(onnx_session(out / "text_prototypes.onnx"), inputs)
    compare(run_torch(model, "text_prototypes", inputs), served)
    with pytest.raises(ParityError):  # the graph holds the caption mask: the official pooling gives other phrases
        compare(run_torch(official, "text_prototypes", inputs), served)


def test_export_cli_from_a_checkpoint(tmp_path):
    from prost_cli.main import main

    model = prost.create_model("tiny", seed=1)
    prost.save_model(model, tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "onnx")]) == 0
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] == sha256(tmp_path / "ckpt" / "model.safetensors")


@pytest.mark.slow
def test_vit_b_32_export_parity_and_hygiene(tmp_path):
    """The official MSR-VTT setting with random weights, batch 1 on CPU: export runs the gate and hygiene checks."""
    model = prost.create_model("vit-b-32", seed=0)
    out = export_onnx(model, tmp_path, parity_batches=(1,))
    video = onnx.load(str(out / "video_prototypes.onnx"), load_external_data=False).graph
    assert [d.dim_value for d in video.output[0].type.tensor_type.shape.dim][1:] == [12, 12, 512]


def test_ranking_gate_on_decoded_synthetic_videos(tiny_export, tmp_path):
    """The dataset gate: real mp4 files decoded as in training, prototypes within the gate, same top-10 rankings."""
    from prost.data.synthetic import generate
    from prost_export.parity import check_dataset_parity

    model, out = tiny_export
    data = generate(tmp_path / "synth", videos=30, seed=5)
    report = check_dataset_parity(model, out, data, split="train", max_videos=16)
    assert report.ranking_queries == 16
    assert {r.name for r in report.rows} >= {p.OBJECT_PROTOTYPES, p.PHRASE_PROTOTYPES}


def test_dataset_scores_in_blocks_equal_one_call(tiny_export, tmp_path):
    """A backend fed at most 5 items a call (a TensorRT profile's max) scores the split as one call of 12 does."""
    from prost.data.synthetic import generate
    from prost_export.parity import dataset_inputs, dataset_scores, onnx_backend

    model, out = tiny_export
    frames, ids = dataset_inputs(model.config, generate(tmp_path / "synth", videos=60, seed=3), max_videos=12)
    assert len(frames) == 12
    ort, calls = onnx_backend(out, model.config), []

    def backend(graph, feeds):
        calls.append(max(len(v) for name, v in feeds.items() if name != "BETA"))
        return ort(graph, feeds)

    protos, blocked = dataset_scores(model.config, backend, frames, ids, batch=5)
    assert max(calls) == 5 and len(calls) == 3 + 3 + 9
    _, whole = dataset_scores(model.config, ort, frames, ids, batch=12)
    np.testing.assert_allclose(blocked, whole, atol=1e-6)
    assert blocked.shape == (12, 12) and protos["OBJECT_PROTOTYPES"].shape[0] == 12
