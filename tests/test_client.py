"""prost_client: torch-free imports, error mapping, the async client and the `prost-client` console script."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tritonclient import grpc as grpcclient
from tritonclient.utils import InferenceServerException

from prost.gallery import store as S
from prost_client import errors, gallery_format as G, protocol as P, wire
from prost_client.client import AsyncProstClient, ProstClient
from prost_model_repository import storage
from prost_model_repository.server import free_port

CONSOLE = Path(sys.executable).parent / "prost-client"


def run_console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, timeout=120)


def test_client_imports_without_torch_or_prost():
    code = ("import prost_client.client, prost_client.cli, sys; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'prost', 'prost_export', 'onnxruntime')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("status, message, cls", [
    ("StatusCode.INVALID_ARGUMENT", "TEXT[0] is empty", errors.InvalidRequestError),
    ("StatusCode.NOT_FOUND", "unknown model", errors.NotFoundError),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", errors.UnavailableError),
    ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'x'", errors.PermissionDeniedError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", errors.DeadlineError),
    ("StatusCode.INTERNAL", "stub crashed", errors.ServerError),
])
def test_grpc_status_maps_to_client_errors(status, message, cls):
    error = errors.from_triton(InferenceServerException(message, status), "prost_text_search")
    assert type(error) is cls and error.status == status.split(".")[1] and message in str(error)


def test_unreachable_server_is_unavailable_after_retries():
    """The channel carries a retry policy (UNAVAILABLE only, never load/unload, 16 MiB retry buffer) and an
    unreachable server ends as UnavailableError once the retries are spent."""
    with ProstClient(f"127.0.0.1:{free_port()}", timeout=2.0, retries=3) as c:
        args = dict(c._channel_args)
        assert args["grpc.enable_retries"] == 1 and args["grpc.per_rpc_retry_buffer_size"] == 16 << 20
        [method] = json.loads(args["grpc.service_config"])["methodConfig"]
        assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert method["retryPolicy"]["maxAttempts"] == 4
        retried = {name["method"] for name in method["name"]}
        assert {"ModelInfer", "ModelReady", "RepositoryIndex"} <= retried
        assert not retried & {"RepositoryModelLoad", "RepositoryModelUnload"}
        assert all(name["service"] == "inference.GRPCInferenceService" for name in method["name"])
        with pytest.raises(errors.UnavailableError):
            c.search("anything")
        with pytest.raises(errors.UnavailableError, match="not ready"):
            c.wait_ready(timeout=0.5)
    no_retries = dict(wire.channel_args(0))
    assert no_retries["grpc.enable_retries"] == 0 and "grpc.service_config" not in no_retries


def test_an_answer_without_its_outputs_is_a_server_error():
    """An ensemble whose inner model's stub died answers without outputs (seen with tritonserver 2.51): a ServerError
    naming the model and the output, not an AttributeError deep in the parser."""
    from tritonclient.grpc import service_pb2

    result = grpcclient.InferResult(service_pb2.ModelInferResponse(model_name=P.TEXT_SEARCH_MODEL))
    with pytest.raises(errors.ServerError, match=f"{P.TEXT_SEARCH_MODEL} answered without {P.VIDEO_IDS}"):
        wire.parse_search(result)


def test_gallery_files_are_safetensors_stamped_with_their_video_encoder(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    objects, events = np.random.rand(2, 3, 4, 5).astype(np.float32), np.random.rand(2, 3, 5).astype(np.float32)
    files = G.gallery_files(["a", "b"], objects, events, video_encoder="ab12")
    path = tmp_path / G.TENSORS_FILE
    path.write_bytes(files[G.TENSORS_FILE])
    loaded = load_file(str(path))
    assert loaded["objects"].dtype == np.float16
    np.testing.assert_array_equal(loaded["objects"], objects.astype(np.float16))
    assert json.loads(files[G.IDS_FILE])["video_ids"] == ["a", "b"]
    with safe_open(str(path), "np") as f:
        assert f.metadata() == G.safetensors_metadata(path)
    assert G.safetensors_metadata(path)[G.ENCODER_STAMP] == "ab12"
    with pytest.raises(ValueError, match="unique"):
        G.gallery_files(["a", "a"], objects, events, video_encoder="ab12")
    (tmp_path / "ids.json").write_bytes(files[G.IDS_FILE])
    with pytest.raises(ValueError, match="not a safetensors file"):
        G.safetensors_metadata(tmp_path / "ids.json")


def test_async_client_answers_like_the_sync_one(triton_server, client, published_gallery, synthetic_videos):
    texts = ["a white star turns orange", "a cross"]

    async def run():
        async with AsyncProstClient(triton_server.url, timeout=60, text_batch_size=1, video_batch_size=1) as c:
            await c.wait_ready(30)
            return await asyncio.gather(c.search(texts, top_k=3), c.score(texts, synthetic_videos[:2]),
                                        c.encode_texts(texts), c.gallery_version())

    hits, scores, (phrases, _), version = asyncio.run(run())
    assert version == client.gallery_version()
    # Dynamic batching may group the two clients' requests differently: scores agree to float rounding, not bits.
    for got, expected in zip(hits, client.search(texts, top_k=3)):
        assert [(h.video_id, h.matched_frames) for h in got] == [(h.video_id, h.matched_frames) for h in expected]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-6)
    np.testing.assert_allclose(scores, client.score(texts, synthetic_videos[:2]), atol=1e-6)
    np.testing.assert_allclose(phrases, client.encode_texts(texts)[0], atol=1e-6)


def test_async_publishing_uses_the_same_rules(triton_server, client, published_gallery, model_repository,
                                              monkeypatch):
    """AsyncProstClient publishes as ProstClient does, full and incremental, and writes the version in a worker
    thread (FAISS encoding would otherwise stop its event loop)."""
    _, ids, objects, events = published_gallery
    on_loop_thread = []

    def write_gallery(*args, **kwargs):
        on_loop_thread.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)

    original = storage.write_gallery
    monkeypatch.setattr(storage, "write_gallery", write_gallery)

    async def run():
        async with AsyncProstClient(triton_server.url, timeout=60,
                                    repository_key=triton_server.repository_key) as c:
            with pytest.raises(errors.ClientError, match="load prost_gallery version"):
                await c.publish_prototypes(ids[:1], objects[:1, :, :-1], events[:1], repository=model_repository)
            with pytest.raises(errors.ClientError, match="both added and removed: " + ids[0]):
                await c.publish_prototypes(ids[:1], objects[:1], events[:1], repository=model_repository,
                                           incremental=True, remove=ids[:2])
            full = await c.publish_prototypes(ids, objects, events, repository=model_repository)
            return full, await c.publish_prototypes([], objects[:0], events[:0], repository=model_repository,
                                                    incremental=True, remove=ids[:1])

    try:
        full, version = asyncio.run(run())
        assert version == client.gallery_version() == G.versions(model_repository / "prost_gallery")[-1] == full + 1
        assert on_loop_thread == [False] * 4
        assert {h.video_id for h in client.search("a cross", top_k=10)[0]} == set(ids[1:])
    finally:
        client.publish_prototypes(ids, objects, events, repository=model_repository)


def test_cli_search_json(triton_server, published_gallery):
    result = run_console("--url", triton_server.url, "search", "a green square disappears", "a star", "--top-k", "2",
                         "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [p["text"] for p in payload] == ["a green square disappears", "a star"]
    for entry in payload:
        assert len(entry["results"]) == 2 and entry["results"][0]["video_id"] in published_gallery[1]
        assert entry["results"][0]["score"] >= entry["results"][1]["score"]


def test_cli_index_and_score(triton_server, client, model_repository, synthetic_videos, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for p in synthetic_videos[:3]:
        (videos / p.name).write_bytes(p.read_bytes())
    try:
        result = run_console("--url", triton_server.url, "--repository-key", triton_server.repository_key, "index",
                             str(videos), "--repository", str(model_repository), "--no-progress")
        assert result.returncode == 0, result.stderr
        assert f"version {client.gallery_version()} with 3 video(s)" in result.stdout
        first = model_repository / P.GALLERY_MODEL / str(client.gallery_version())
        with grpcclient.InferenceServerClient(triton_server.url) as raw:
            config = raw.get_model_config(P.VIDEO_MODEL, as_json=True)["config"]
        served_encoder = config["parameters"][P.VIDEO_ENCODER_PARAM]["string_value"]
        assert S.version_stamp(first) == served_encoder
        segment = first / "seg-000001" / G.TENSORS_FILE  # written by the server's gallery writer
        assert G.safetensors_metadata(segment)[G.ENCODER_STAMP] == served_encoder
        assert {h.video_id for h in client.search("anything", top_k=10)[0]} == {p.stem for p in synthetic_videos[:3]}

        more = tmp_path / "more"  # incremental: one video added, one removed, the kept segment not copied
        more.mkdir()
        (more / synthetic_videos[3].name).write_bytes(synthetic_videos[3].read_bytes())
        (tmp_path / "remove.txt").write_text(f"{synthetic_videos[0].stem}\n\n")
        key = ("--repository-key", triton_server.repository_key)
        result = run_console("--url", triton_server.url, *key, "index", str(more), "--repository",
                             str(model_repository), "--incremental", "--remove", str(tmp_path / "remove.txt"),
                             "--no-progress")
        assert result.returncode == 0, result.stderr
        assert f"version {client.gallery_version()} added 1 video(s), removed 1" in result.stdout
        second = model_repository / P.GALLERY_MODEL / str(client.gallery_version())
        assert os.stat(second / "seg-000001" / G.TENSORS_FILE).st_ino == os.stat(segment).st_ino
        assert {h.video_id for h in client.search("anything", top_k=10)[0]} == {
            p.stem for p in synthetic_videos[1:4]}
        result = run_console("--url", triton_server.url, *key, "index", "--incremental", "--remove",
                             str(tmp_path / "remove.txt"), "--repository", str(model_repository))
        assert result.returncode == 1 and f"does not hold: {synthetic_videos[0].stem}" in result.stderr
        assert client.gallery_version() == int(second.name)
        result = run_console("--url", triton_server.url, "score", "--text", "a cross", "--video",
                             str(synthetic_videos[0]), "--json")
        assert result.returncode == 0, result.stderr
        served = json.loads(result.stdout)["scores"]
        np.testing.assert_allclose(served, client.score(["a cross"], synthetic_videos[:1]), atol=1e-6)
        result = run_console("--url", triton_server.url, "search", "")
        assert result.returncode == 1 and "INVALID_ARGUMENT" not in result.stdout and "empty" in result.stderr
    finally:  # leave the session's gallery as the other tests expect it
        client.publish_gallery(synthetic_videos, repository=model_repository, progress=False)
    assert len(client.search("anything", top_k=10)[0]) == len(synthetic_videos)


def test_index_leaves_out_videos_it_cannot_decode_and_names_them(triton_server, client, model_repository,
                                                                  synthetic_videos, tmp_path):
    """One bad file in a directory costs only itself: the others are published and the bad ones are listed; with
    --strict (and in the library without on_invalid) the first bad video stops everything, named."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for p in synthetic_videos[:3]:
        (videos / p.name).write_bytes(p.read_bytes())
    (videos / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (videos / "empty.mp4").write_bytes(b"")
    index = ["--url", triton_server.url, "--repository-key", triton_server.repository_key, "index", str(videos),
             "--repository", str(model_repository), "--no-progress", "--batch-size", "4"]
    try:
        served = client.gallery_version()
        result = run_console(*index, "--strict")
        assert result.returncode == 1 and "broken.mp4: " in result.stderr and client.gallery_version() == served
        for call in (client.encode_videos, lambda v: client.score("a cross", v)):
            with pytest.raises(errors.InvalidRequestError, match=r"videos\[1\] \(1200 bytes\): "):
                call([synthetic_videos[0], (videos / "broken.mp4").read_bytes()])

        result = run_console(*index)
        assert result.returncode == 3, result.stderr
        assert "with 3 video(s); left out 2" in result.stdout
        assert {line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("skipped ")} == {
            f"skipped {videos / 'broken.mp4'}", f"skipped {videos / 'empty.mp4'}"}
        assert {h.video_id for h in client.search("anything", top_k=10)[0]} == {p.stem for p in synthetic_videos[:3]}

        for p in synthetic_videos[:3]:
            (videos / p.name).unlink()
        result = run_console(*index)
        assert result.returncode == 1 and "none of the 2 videos could be read and encoded" in result.stderr
    finally:  # leave the session's gallery as the other tests expect it
        client.publish_gallery(synthetic_videos, repository=model_repository, progress=False)


def test_requests_never_exceed_the_served_max_batch_size(triton_server, client, synthetic_videos):
    """Asked for 100 items per request, the client sends at most the repository's 32 texts and 8 videos."""
    texts = [f"a red circle moves {d}" for d in ("left", "right", "up", "down")] * 10  # 40 texts
    videos = (synthetic_videos * 2)[:10]
    with ProstClient(triton_server.url, timeout=60.0, text_batch_size=100, video_batch_size=100) as wide:
        scores = wide.score(texts, videos)
        phrases, _ = wide.encode_texts(texts)
        objects, _ = wide.encode_videos(videos)
    assert scores.shape == (40, 10) and len(phrases) == 40 and len(objects) == 10
    np.testing.assert_allclose(scores, client.score(texts, videos), atol=1e-6)
