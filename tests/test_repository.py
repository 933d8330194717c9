"""The Triton repository writer: configs of every variant against Triton's schema, versioning, manifest checksums."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

import prost
from prost.errors import RepositoryError
from prost.fileio import sha256_file
from prost_client import gallery_format as G, protocol as P
from prost_export.graphs import example_inputs
from prost_export.onnx import export_onnx
from prost_export.parity import onnx_session, run_onnx
from prost_export.specs import graph_specs
from prost_model_repository import storage
from prost_model_repository.graph_rewrite import with_float16_inputs
from prost_model_repository.writer import VARIANTS, register_cli, write_repository

ALL_MODELS = {P.TOKENIZER_MODEL, P.TEXT_MODEL, P.VIDEO_MODEL, P.SIMILARITY_MODEL, P.VIDEO_DECODE_MODEL,
              P.GALLERY_MODEL, P.TEXT_SEARCH_MODEL, P.ENCODE_TEXT_MODEL, P.ENCODE_VIDEO_MODEL, P.SCORE_MODEL}
ENSEMBLES = (P.TEXT_SEARCH_MODEL, P.ENCODE_TEXT_MODEL, P.ENCODE_VIDEO_MODEL, P.SCORE_MODEL)
GRAPHS = {P.TEXT_MODEL: "text_prototypes", P.VIDEO_MODEL: "video_prototypes", P.SIMILARITY_MODEL: "similarity"}


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())


def add_engines(export: Path, cc: str, *, max_batch: int = 32, opt: int = 8, min_batch: int = 1,
                tensorrt: str = "10.16.1.11") -> None:
    """Engine files and manifest entries as `prost build-engines` writes them on a GPU of compute capability `cc`
    (the plan bytes are dummies: the writer only selects and copies them)."""
    manifest = json.loads((export / "manifest.json").read_text())
    for graph in GRAPHS.values():
        plan = export / f"{graph}.sm{cc.replace('.', '')}.plan"
        plan.write_bytes(f"engine for sm{cc} {graph}".encode())
        manifest.setdefault("engines", {})[plan.name] = {
            "graph": graph, "file": plan.name, "onnx_sha256": manifest["files"][f"{graph}.onnx"]["sha256"],
            "compute_capability": cc, "tensorrt": tensorrt, "gpu": f"GPU sm{cc}", "precision": "fp16",
            "profile": {"min": min_batch, "opt": opt, "max": max_batch}, "sha256": sha256_file(plan)}
    (export / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def export_with_plans(onnx_dir, tmp_path_factory) -> Path:
    """A copy of the export with engines for two GPU architectures listed in its manifest."""
    out = tmp_path_factory.mktemp("export_plans") / "export"
    shutil.copytree(onnx_dir, out)
    add_engines(out, "9.0")
    add_engines(out, "8.6")
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_parses_against_triton_schema(variant, onnx_dir, export_with_plans, tmp_path):
    source = export_with_plans if variant == "tensorrt" else onnx_dir
    repo = write_repository(source, tmp_path / "repo", variant, max_batch_size=16, fp16=True,
                            tensorrt_version="10.16.1.11" if variant == "tensorrt" else "")
    configs = {m: read_config(repo, m) for m in ALL_MODELS}
    assert {p.name for p in repo.iterdir() if p.is_dir()} == ALL_MODELS
    config = prost.ProstConfig.from_dict(json.loads((onnx_dir / "manifest.json").read_text())["config"])
    for name, cfg in configs.items():
        assert cfg.name == name and (repo / name / "1").is_dir()
    for name in GRAPHS:
        cfg = configs[name]
        backend = {"cpu": ("python", ""), "onnxruntime": ("onnxruntime", ""), "tensorrt": ("", "tensorrt_plan")}
        assert (cfg.backend, cfg.platform) == backend[variant]
        assert cfg.model_warmup and cfg.model_warmup[0].batch_size == 1
        files = {p.name for p in (repo / name / "1").iterdir()}
        expected = {"cpu": {"model.py", "model.onnx"}, "onnxruntime": {"model.onnx"},
                    "tensorrt": {"model.sm90.plan", "model.sm86.plan"}}[variant]
        assert files == expected
        if variant == "tensorrt":  # one plan per compute capability, no default model.plan
            assert dict(cfg.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.6": "model.sm86.plan"}
            assert (repo / name / "1" / "model.sm86.plan").read_bytes() == \
                (export_with_plans / f"{GRAPHS[name]}.sm86.plan").read_bytes()
    text = configs[P.TEXT_MODEL]
    assert [(i.name, list(i.dims)) for i in text.input] == [(P.TOKEN_IDS, [config.max_words])]
    assert text.max_batch_size == 16
    assert text.response_cache.enable == (variant != "cpu")  # never on a python model (see the writer's docstring)
    assert not configs[P.GALLERY_MODEL].response_cache.enable
    if variant == "onnxruntime":
        accel = text.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
        assert accel.parameters["trt_profile_max_shapes"] == f"{P.TOKEN_IDS}:16x{config.max_words}"
        assert accel.parameters["trt_engine_cache_enable"] == "1"
    # serving.md: preferred_batch_size only for engines with several profiles; ours have one
    assert text.HasField("dynamic_batching") and text.dynamic_batching.max_queue_delay_microseconds == 0
    assert not text.dynamic_batching.preferred_batch_size
    similarity = configs[P.SIMILARITY_MODEL]
    beta = next(i for i in similarity.input if i.name == P.BETA)
    assert similarity.max_batch_size == 0 and beta.optional == (variant == "cpu")
    # Python models that take strings carry no warmup; every python model is a CPU instance group.
    for name in (P.TOKENIZER_MODEL, P.VIDEO_DECODE_MODEL, P.GALLERY_MODEL):
        assert configs[name].backend == "python" and not configs[name].model_warmup
        assert configs[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    _check_ensembles(configs)


def _check_ensembles(configs: dict[str, mc.ModelConfig]) -> None:
    """Ensemble rules Triton enforces at load: no instance groups or warmup, batch size within every step's."""
    for name in ENSEMBLES:
        cfg = configs[name]
        assert cfg.platform == "ensemble" and not cfg.instance_group and not cfg.model_warmup
        produced = {i.name for i in cfg.input}
        for step in cfg.ensemble_scheduling.step:
            composing = configs[step.model_name]
            assert cfg.max_batch_size <= composing.max_batch_size or composing.max_batch_size == 0 \
                and cfg.max_batch_size == 0
            assert set(step.input_map) <= {i.name for i in composing.input}
            assert set(step.input_map.values()) <= produced, (name, step.model_name)
            assert set(step.output_map) <= {o.name for o in composing.output}
            produced |= set(step.output_map.values())
        assert {o.name for o in cfg.output} <= produced
    assert not configs[P.TEXT_SEARCH_MODEL].response_cache.enable  # see the writer's docstring
    assert next(i for i in configs[P.TEXT_SEARCH_MODEL].input if i.name == P.TOP_K).optional


def test_tensorrt_variant_needs_engines(onnx_dir, tmp_path):
    with pytest.raises(RepositoryError, match=r"no TensorRT plan .*prost build-engines --export"):
        write_repository(onnx_dir, tmp_path / "repo", "tensorrt", tensorrt_version="any")


def copy_export(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    if config_changes:
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["config"].update(config_changes)
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_tensorrt_batch_must_fit_every_engine_profile(onnx_dir, tmp_path):
    export = copy_export(onnx_dir, tmp_path / "export")
    add_engines(export, "9.0", max_batch=32, opt=8)
    add_engines(export, "8.9", max_batch=8, opt=4)
    with pytest.raises(RepositoryError, match=r"profile max 8 of text_prototypes\.sm89\.plan"):
        write_repository(export, tmp_path / "big", "tensorrt", tensorrt_version="any", max_batch_size=32)
    repo = write_repository(export, tmp_path / "ok", "tensorrt", tensorrt_version="any", max_batch_size=8,
                            max_video_batch_size=8)
    assert read_config(repo, P.TEXT_MODEL).max_batch_size == 8
    with pytest.raises(RepositoryError, match="batches of 16"):  # similarity: texts and videos share the profile
        write_repository(export, tmp_path / "video", "tensorrt", tensorrt_version="any", max_batch_size=8,
                         max_video_batch_size=16)


def test_stale_or_changed_tensorrt_plans_are_refused(export_with_plans, tmp_path):
    export = copy_export(export_with_plans, tmp_path / "stale")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["engines"]["video_prototypes.sm86.plan"]["onnx_sha256"] = "0" * 64  # built from an older export
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match=r"video_prototypes\.sm86\.plan .*onnx_sha256 differs.*build-engines"):
        write_repository(export, tmp_path / "repo", "tensorrt", tensorrt_version="any")
    export = copy_export(export_with_plans, tmp_path / "changed")
    (export / "similarity.sm90.plan").write_bytes(b"another engine")
    with pytest.raises(RepositoryError, match=r"similarity\.sm90\.plan is missing or does not match its sha256"):
        write_repository(export, tmp_path / "repo2", "tensorrt", tensorrt_version="any")


def test_video_decode_samples_like_training_and_bounds_its_inputs(onnx_dir, tmp_path):
    repo = write_repository(onnx_dir, tmp_path / "default")
    params = {k: v.string_value for k, v in read_config(repo, P.VIDEO_DECODE_MODEL).parameters.items()}
    assert json.loads((onnx_dir / "manifest.json").read_text())["config"]["sample_fps"] is None
    assert params["SAMPLE_FPS"] == "none"
    assert params["MAX_VIDEO_BYTES"] == str(256 << 20) and params["MAX_SOURCE_FRAMES"] == "20000"
    export = copy_export(onnx_dir, tmp_path / "fps", sample_fps=1.0)
    assert run_cli(["repository", "build", "--export", str(export), "--out", str(tmp_path / "fps_repo"),
                    "--max-video-bytes", "1000000", "--max-source-frames", "500"]) == 0
    params = {k: v.string_value for k, v in read_config(tmp_path / "fps_repo", P.VIDEO_DECODE_MODEL).parameters.items()}
    assert (params["SAMPLE_FPS"], params["MAX_VIDEO_BYTES"], params["MAX_SOURCE_FRAMES"]) == ("1.0", "1000000", "500")


def test_modified_export_is_refused(onnx_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(onnx_dir, export)
    with open(export / "similarity.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RepositoryError, match="sha256"):
        write_repository(export, tmp_path / "repo")


def test_rebuild_adds_versions_only_for_changed_models(onnx_dir, tmp_path):
    repo = write_repository(onnx_dir, tmp_path / "repo")
    write_repository(onnx_dir, repo)  # identical: nothing new
    assert all(G.versions(repo / m) == [1] for m in ALL_MODELS)

    write_repository(onnx_dir, repo, max_video_batch_size=4)  # only the video side changes
    changed = {m for m in ALL_MODELS if G.versions(repo / m) == [1, 2]}
    assert changed == {P.VIDEO_DECODE_MODEL, P.VIDEO_MODEL, P.ENCODE_VIDEO_MODEL}
    assert read_config(repo, P.VIDEO_MODEL).max_batch_size == 4


def video_encoder(export_dir: Path) -> str:
    """The sha256 of an export's video encoder graph: the stamp of the galleries it encodes."""
    return json.loads((export_dir / "manifest.json").read_text())["files"]["video_prototypes.onnx"]["sha256"]


def test_gallery_survives_rebuilds_until_the_video_encoder_changes(onnx_dir, tmp_path):
    repo = write_repository(onnx_dir, tmp_path / "repo")
    for name in (P.VIDEO_MODEL, P.GALLERY_MODEL):  # what clients stamp with, and what the gallery loads
        assert f'key: "{P.VIDEO_ENCODER_PARAM}"\n  value {{\n    string_value: "{video_encoder(onnx_dir)}"' in (
            repo / name / "config.pbtxt").read_text()
    cfg = prost.ProstConfig.from_dict(json.loads((onnx_dir / "manifest.json").read_text())["config"])
    h, d = cfg.head, cfg.embed_dim
    files = G.gallery_files(["a", "b"], np.ones((2, h.num_frames, h.num_objects, d)), np.ones((2, h.num_events, d)),
                            video_encoder=video_encoder(onnx_dir))
    files.update({n: (repo / P.GALLERY_MODEL / "1" / n).read_bytes() for n in (G.MODEL_FILE, G.SIMILARITY_FILE)})
    assert storage.write_version(repo / P.GALLERY_MODEL, files) == 2

    write_repository(onnx_dir, repo, max_batch_size=8)  # new config: version 3 keeps the published gallery
    assert G.versions(repo / P.GALLERY_MODEL) == [1, 2, 3]
    ids = json.loads((repo / P.GALLERY_MODEL / "3" / G.IDS_FILE).read_text())["video_ids"]
    assert ids == ["a", "b"]

    stale = {**files, **G.gallery_files(["c"], np.ones((1, h.num_frames, h.num_objects, d)),
                                        np.ones((1, h.num_events, d)), video_encoder="0" * 64)}
    assert storage.write_version(repo / P.GALLERY_MODEL, stale) == 4  # published by a client of another export
    write_repository(onnx_dir, repo, max_batch_size=4)  # same encoder in the config, another one in the gallery
    assert json.loads((repo / P.GALLERY_MODEL / "5" / G.IDS_FILE).read_text())["video_ids"] == []

    assert storage.write_version(repo / P.GALLERY_MODEL, files) == 6
    other = export_onnx(prost.create_model("tiny", seed=1), tmp_path / "other", parity=False)
    write_repository(other, repo, max_batch_size=8)  # new video encoder: the old prototypes are stale
    assert G.versions(repo / P.GALLERY_MODEL) == [1, 2, 3, 4, 5, 6, 7]
    assert json.loads((repo / P.GALLERY_MODEL / "7" / G.IDS_FILE).read_text())["video_ids"] == []


@pytest.mark.parametrize("same_export", [True, False])
def test_a_gallery_from_before_encoder_stamps_is_stamped_by_a_rebuild_of_its_export(onnx_dir, tmp_path, same_export):
    """Upgrading: a gallery without a stamp is carried over, stamped, when the config it was served under names the
    export's video encoder; under another export it is dropped like any stale gallery."""
    repo = write_repository(onnx_dir, tmp_path / "repo")
    cfg = prost.ProstConfig.from_dict(json.loads((onnx_dir / "manifest.json").read_text())["config"])
    h, d = cfg.head, cfg.embed_dim
    objects = np.random.default_rng(0).standard_normal((2, h.num_frames, h.num_objects, d)).astype(np.float16)
    events = np.ones((2, h.num_events, d), np.float16)
    legacy = {G.TENSORS_FILE: G.safetensors_bytes({"objects": objects, "events": events}, {"format": "prost-gallery"}),
              G.IDS_FILE: json.dumps({"video_ids": ["a", "b"]}).encode()}
    legacy.update({n: (repo / P.GALLERY_MODEL / "1" / n).read_bytes() for n in (G.MODEL_FILE, G.SIMILARITY_FILE)})
    assert storage.write_version(repo / P.GALLERY_MODEL, legacy) == 2
    export = onnx_dir if same_export else export_onnx(prost.create_model("tiny", seed=1), tmp_path / "o", parity=False)
    write_repository(export, repo, max_batch_size=8)
    rebuilt = repo / P.GALLERY_MODEL / "3"
    assert G.safetensors_metadata(rebuilt / G.TENSORS_FILE)[G.ENCODER_STAMP] == video_encoder(export)
    ids = json.loads((rebuilt / G.IDS_FILE).read_text())["video_ids"]
    assert ids == (["a", "b"] if same_export else [])
    if same_export:
        from safetensors.numpy import load_file

        np.testing.assert_array_equal(load_file(str(rebuilt / G.TENSORS_FILE))["objects"], objects)


def test_manifest_lists_every_file_with_its_checksum(onnx_dir, tmp_path):
    repo = write_repository(onnx_dir, tmp_path / "repo")
    write_repository(onnx_dir, repo, queue_delay_us=100)
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["variant"] == "cpu" and set(manifest["models"]) == ALL_MODELS
    listed = set()
    for name, entry in manifest["models"].items():
        assert entry["versions"] == G.versions(repo / name) and entry["latest"] == entry["versions"][-1]
        for rel, digest in entry["files"].items():
            assert sha256_file(repo / name / rel) == digest, rel
            listed.add(f"{name}/{rel}")
    on_disk = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and p.name != storage.LOCK_FILE}
    assert on_disk - {"manifest.json"} == listed
    export = json.loads((onnx_dir / "manifest.json").read_text())
    assert manifest["export"]["files"]["text_prototypes.onnx"] == export["files"]["text_prototypes.onnx"]["sha256"]
    assert sha256_file(repo / P.TEXT_MODEL / "1" / "model.onnx") == manifest["export"]["files"][
        "text_prototypes.onnx"]


def test_a_damaged_manifest_stops_a_publisher_and_a_rebuild_rewrites_it(onnx_dir, tmp_path):
    """A publisher never writes over a manifest it cannot read (the other entries would be lost); a rebuild lists
    every model afresh, including one whose entry was damaged, and keeps stale entries out."""
    repo = write_repository(onnx_dir, tmp_path / "repo")
    (repo / storage.MANIFEST_FILE).write_text('{"models": {"prost_text": ')
    with pytest.raises(RepositoryError, match="cannot read .*manifest.json.*prost repository build"):
        storage.commit_gallery(repo, P.GALLERY_MODEL, storage.new_staging(repo / P.GALLERY_MODEL), 1)
    assert G.versions(repo / P.GALLERY_MODEL) == [1]
    write_repository(onnx_dir, repo)
    rewritten = json.loads((repo / storage.MANIFEST_FILE).read_text())
    assert rewritten["models"] == {name: storage.describe_model_dir(repo / name) for name in ALL_MODELS}
    rewritten["models"]["retired_model"] = rewritten["models"].pop(P.TEXT_MODEL)
    storage.write_manifest(repo, rewritten)
    write_repository(onnx_dir, repo)
    assert set(json.loads((repo / storage.MANIFEST_FILE).read_text())["models"]) == ALL_MODELS

    (repo / f".{storage.MANIFEST_FILE}.{os.getpid()}.tmp").mkdir()  # the manifest cannot be replaced now
    with pytest.raises(RepositoryError, match="cannot write .*manifest.json"):
        storage.commit_gallery(repo, P.GALLERY_MODEL, storage.new_staging(repo / P.GALLERY_MODEL), 1)
    assert G.versions(repo / P.GALLERY_MODEL) == [1]  # no version left that the manifest does not list


def test_gallery_model_py_is_what_the_client_uploads():
    from importlib import resources

    source = resources.files("prost_model_repository").joinpath("gallery/model.py").read_text()
    assert source == G.MODEL_SOURCE


def run_cli(argv: list[str]) -> int:
    """`prost repository ...` through the subcommands this module registers (as prost_cli.main wires them)."""
    parser = argparse.ArgumentParser(prog="prost")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_builds_a_repository(onnx_dir, tmp_path, capsys):
    assert run_cli(["repository", "build", "--export", str(onnx_dir), "--out", str(tmp_path / "repo"),
                    "--variant", "cpu", "--max-batch-size", "8"]) == 0
    assert "prost_text_search" in capsys.readouterr().out
    assert read_config(tmp_path / "repo", P.TOKENIZER_MODEL).max_batch_size == 8
    with pytest.raises(RepositoryError, match="prost export"):
        run_cli(["repository", "build", "--export", str(tmp_path / "missing"), "--out", str(tmp_path / "repo2")])


PUBLISHER = """
import sys
from pathlib import Path
from prost_model_repository import storage
model_dir, tag = Path(sys.argv[1]), sys.argv[2]
print(*[storage.write_version(model_dir, {"who": tag.encode(), "big.bin": bytes(1 << 20)}) for _ in range(5)])
"""


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    """Two processes writing versions of one model at once: every write succeeds, no number twice, no staging."""
    model_dir = tmp_path / "repo" / P.GALLERY_MODEL
    storage.write_version(model_dir, {"who": b"builder"})
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(model_dir), tag], stdout=subprocess.PIPE,
                              text=True) for tag in ("a", "b")]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    written = {tag: [int(v) for v in out.split()] for tag, out in zip("ab", outputs)}
    assert sorted(written["a"] + written["b"]) == list(range(2, 12)) == G.versions(model_dir)[1:]
    for tag, numbers in written.items():
        assert all((model_dir / str(v) / "who").read_bytes() == tag.encode() for v in numbers)
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize("first", ["publisher", "builder"])
def test_a_rebuild_during_a_publish_keeps_the_published_gallery(onnx_dir, tmp_path, first, monkeypatch):
    """`prost repository build` copies the latest gallery under the gallery's lock and lists it in the manifest
    before releasing that lock, so a gallery published at the same time is never rolled back, in the versions or in
    the manifest, whichever writer goes first."""
    from prost_model_repository import writer as R

    repo = write_repository(onnx_dir, tmp_path / "repo")
    model_dir = repo / P.GALLERY_MODEL
    cfg = prost.ProstConfig.from_dict(json.loads((onnx_dir / "manifest.json").read_text())["config"])
    h, d = cfg.head, cfg.embed_dim
    files = G.gallery_files(["a", "b"], np.ones((2, h.num_frames, h.num_objects, d)), np.ones((2, h.num_events, d)),
                            video_encoder=video_encoder(onnx_dir))

    def publish():  # as ProstClient does with a local repository
        staging = storage.new_staging(model_dir)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        with storage.DirectoryLock(model_dir):
            storage.commit_gallery(repo, P.GALLERY_MODEL, staging, 1)

    if first == "publisher":
        publish()
    else:  # publish once the builder has written the gallery, before it writes the next model
        write_model = R._write_model

        def publish_then_write(target, spec):
            if target != model_dir and G.versions(model_dir) == [1, 2]:
                publish()
            return write_model(target, spec)

        monkeypatch.setattr(R, "_write_model", publish_then_write)
    write_repository(onnx_dir, repo, max_batch_size=8)
    assert G.versions(model_dir) == [1, 2, 3]
    assert json.loads((model_dir / "3" / G.IDS_FILE).read_text())["video_ids"] == ["a", "b"]
    manifest = json.loads((repo / storage.MANIFEST_FILE).read_text())
    assert manifest["models"][P.GALLERY_MODEL] == storage.describe_model_dir(model_dir)


def test_a_held_lock_is_reported_not_waited_on_forever(tmp_path):
    with storage.DirectoryLock(tmp_path):
        with pytest.raises(RepositoryError, match="locked by another writer"):
            with storage.DirectoryLock(tmp_path, timeout=0.2):
                pass


def test_tensorrt_plans_must_match_the_serving_tensorrt_and_take_batch_1(onnx_dir, tmp_path):
    export = copy_export(onnx_dir, tmp_path / "export")
    add_engines(export, "9.0", tensorrt="10.13.3.9")
    with pytest.raises(RepositoryError, match=r"built with TensorRT 10\.13\.3\.9, but the serving Triton has 10\.16"):
        write_repository(export, tmp_path / "other", "tensorrt", tensorrt_version="10.16.1.11")
    assert (write_repository(export, tmp_path / "same", "tensorrt", tensorrt_version="10.13.3.9")
            / P.TEXT_MODEL / "1" / "model.sm90.plan").is_file()
    add_engines(export, "9.0", min_batch=2)
    with pytest.raises(RepositoryError, match="profile min 2, but Triton sends batches of 1"):
        write_repository(export, tmp_path / "min", "tensorrt", tensorrt_version="any")


def test_max_top_k_below_the_default_top_k_is_refused(onnx_dir, tmp_path):
    with pytest.raises(RepositoryError, match="max_top_k 5 is below the default TOP_K 10"):
        write_repository(onnx_dir, tmp_path / "repo", "cpu", max_top_k=5)


def test_float16_inputs_give_the_graph_bit_identical_scores(tiny_model, onnx_dir, tmp_path):
    """The gallery's copy of the similarity graph takes its fp16 prototypes as stored; fp16 to fp32 is exact, so
    the scores equal the export's graph on the same values in fp32."""
    out, spec = onnx_dir, graph_specs(tiny_model.config)["similarity"]
    bank = (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)
    session = onnx_session(out / spec.onnx_file)
    (tmp_path / "half.onnx").write_bytes(with_float16_inputs(out / spec.onnx_file, bank))
    half = onnx_session(tmp_path / "half.onnx")
    assert {i.name: i.type for i in half.get_inputs() if i.name in bank} == dict.fromkeys(bank, "tensor(float16)")
    inputs = {**example_inputs(spec, batch=3, seed=5, videos=4), P.BETA: np.array([1.0], np.float32)}
    stored = {k: v.astype(np.float16) if k in bank else v for k, v in inputs.items()}
    want = run_onnx(session, {k: v.astype(np.float32) for k, v in stored.items()})
    got = run_onnx(half, stored)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(RepositoryError, match="no float32 input TOKEN_IDS"):
        with_float16_inputs(out / spec.onnx_file, (P.TOKEN_IDS,))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    for outputs in (["x_float32"], ["y", "x"]):  # the cast's name is taken; the input is also an output
        nodes = [helper.make_node("Relu", ["x"], [outputs[0]])]
        graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1])
                                                     for n in outputs])
        onnx.save(helper.make_model(graph), tmp_path / "clash.onnx")
        with pytest.raises(RepositoryError, match="cannot cast x in place"):
            with_float16_inputs(tmp_path / "clash.onnx", ("x",))


def test_onnxruntime_engine_caches_are_keyed_by_graph_content(onnx_dir, tmp_path):
    """ORT-TRT names cached engines by graph structure, not weights: two exports with equal graphs and different
    weights must not share an engine cache directory, while a rebuild of the same export keeps its own."""
    other = export_onnx(prost.create_model("tiny", seed=1), tmp_path / "export-seed1", parity=False)

    def cache_paths(export_dir: Path, out: Path) -> dict[str, str]:
        repo = write_repository(export_dir, out, "onnxruntime")
        return {name: dict(read_config(repo, name).optimization.execution_accelerators.gpu_execution_accelerator[0]
                           .parameters)["trt_engine_cache_path"] for name in GRAPHS}

    first, again = cache_paths(onnx_dir, tmp_path / "a"), cache_paths(onnx_dir, tmp_path / "b")
    retrained = cache_paths(other, tmp_path / "c")
    assert first == again
    assert all(first[name] != retrained[name] for name in GRAPHS if name != P.SIMILARITY_MODEL)
    assert first[P.SIMILARITY_MODEL] == retrained[P.SIMILARITY_MODEL]  # weight-free: the same graph, rightly shared


def test_the_python_models_refuse_numpy_2_and_say_why():
    from prost_model_repository.compat import numpy_problem

    assert numpy_problem("1.26.4") is None
    assert "numpy<2" in numpy_problem("2.0.1") and "numpy==1.26.4" in numpy_problem("2.2.0")
