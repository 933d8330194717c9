"""End to end on a real tritonserver: served results equal the torch model's, bad requests fail alone, galleries
swap under load, publishing is safe under timeouts and concurrency, the model-repository endpoints need the key, and
`prost serve` stops cleanly on a signal."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import prost
from prost.data.video import decode_video
from prost.model.prost import TextPrototypes, VideoPrototypes
from prost_client import errors, gallery_format as G, protocol as P, wire
from prost_client.client import AsyncProstClient, ProstClient
from prost_model_repository import storage
from prost_client.wire import key_headers
from prost.gallery.ranking import merge_top_k

ATOL = 1e-4


@pytest.fixture(scope="module")
def texts(synthetic_dataset) -> list[str]:
    captions = [json.loads(line)["caption"] for line in (synthetic_dataset / "captions.jsonl").read_text().splitlines()]
    return captions[:4] + ["a red circle moves left", "something else entirely"]


@pytest.fixture(scope="module")
def reference(tiny_model, synthetic_videos):
    """Prototypes of the synthetic videos computed in-process with the torch model (frames decoded as served)."""
    return encode_videos(tiny_model, synthetic_videos, tiny_model.config.sample_fps)


def encode_videos(model, videos: list[Path], sample_fps: float | None) -> VideoPrototypes:
    cfg = model.config
    frames = np.stack([decode_video(p, cfg.head.num_frames, cfg.vision.image_size, sample_fps=sample_fps).frames
                       for p in videos])
    with torch.no_grad():
        return model.encode_video(torch.from_numpy(frames))


def encode_texts(model, texts: list[str]) -> TextPrototypes:
    with torch.no_grad():
        return model.encode_text(torch.from_numpy(prost.tokenize(texts, model.config.max_words)))


def test_encode_equals_torch(client, reference, synthetic_videos):
    objects, events = client.encode_videos(synthetic_videos, batch_size=4)
    np.testing.assert_allclose(objects, reference.objects.numpy(), atol=ATOL)
    np.testing.assert_allclose(events, reference.events.numpy(), atol=ATOL)


def test_score_equals_torch(client, tiny_model, reference, synthetic_videos, texts):
    text = encode_texts(tiny_model, texts)
    phrases, sentence = client.encode_texts(texts)
    np.testing.assert_allclose(phrases, text.phrases.numpy(), atol=ATOL)
    np.testing.assert_allclose(sentence, text.sentence.numpy(), atol=ATOL)
    for beta in (None, 2.5):
        served = client.score(texts, synthetic_videos, beta=beta)
        expected = prost.similarity(text, reference, beta=tiny_model.config.beta if beta is None else beta).total
        np.testing.assert_allclose(served, expected.numpy(), atol=ATOL)


def inference_count(triton_server, model: str) -> int:
    raw = grpcclient.InferenceServerClient(triton_server.url)
    return int(raw.get_inference_statistics(model, as_json=True)["model_stats"][0].get("inference_count", 0))


def test_score_decodes_each_video_once(triton_server, client, texts, synthetic_videos):
    """Texts in chunks of 2 and videos in chunks of 4: every video is decoded once, not once per text chunk."""
    before = inference_count(triton_server, P.VIDEO_DECODE_MODEL)
    with ProstClient(triton_server.url, timeout=60, text_batch_size=2, video_batch_size=4) as chunked:
        served = chunked.score(texts, synthetic_videos)
    assert inference_count(triton_server, P.VIDEO_DECODE_MODEL) - before == len(synthetic_videos)
    np.testing.assert_allclose(served, client.score(texts, synthetic_videos), atol=1e-6)
    assert client.score([], synthetic_videos).shape == (0, len(synthetic_videos))


def test_video_decode_parameters_are_applied_per_request(triton_server, tiny_model, synthetic_videos):
    """SAMPLE_FPS changes which frames are served; oversized inputs and over-long clips are INVALID_ARGUMENT and
    fail alone. prost_video_decode is reloaded with overridden parameters, then with its original config."""
    raw = grpcclient.InferenceServerClient(triton_server.url)
    headers = key_headers(triton_server.repository_key)
    config = raw.get_model_config(P.VIDEO_DECODE_MODEL, as_json=True)["config"]
    smallest = min(synthetic_videos, key=lambda p: p.stat().st_size)

    def reload(**params):
        changed = json.loads(json.dumps(config))
        changed["parameters"].update({k: {"string_value": str(v)} for k, v in params.items()})
        raw.load_model(P.VIDEO_DECODE_MODEL, config=json.dumps(changed), headers=headers)

    try:
        reload(SAMPLE_FPS=1.0)
        with ProstClient(triton_server.url, timeout=60) as c:
            c.wait_ready(60)
            objects, _ = c.encode_videos(synthetic_videos[:2])
            expected = encode_videos(tiny_model, synthetic_videos[:2], sample_fps=1.0)
            np.testing.assert_allclose(objects, expected.objects.numpy(), atol=ATOL)
            assert not np.allclose(objects, encode_videos(tiny_model, synthetic_videos[:2], None).objects.numpy(),
                                   atol=ATOL)
        reload(MAX_VIDEO_BYTES=smallest.stat().st_size, MAX_SOURCE_FRAMES=3)
        with ProstClient(triton_server.url, timeout=60) as c:
            c.wait_ready(60)
            with pytest.raises(errors.InvalidRequestError, match="MAX_VIDEO_BYTES"):
                c.encode_videos([smallest.read_bytes() + b"\0"])
            with pytest.raises(errors.InvalidRequestError, match="more than the limit of 3"):
                c.encode_videos([smallest])
    finally:  # the original config (a load without one keeps the override while config.pbtxt is unchanged)
        reload()
    with ProstClient(triton_server.url, timeout=60) as c:
        c.wait_ready(60)
        assert c.encode_videos(synthetic_videos[:1])[0].shape[0] == 1


def test_search_equals_torch(client, published_gallery, tiny_model, reference, texts):
    """Same top-k ids, scores and matched frames as the torch model on the stored (fp16) gallery prototypes."""
    _, ids, _, _ = published_gallery
    stored = VideoPrototypes(reference.objects.half().float(), reference.events.half().float())
    text = encode_texts(tiny_model, texts)
    scores = prost.similarity(text, stored, beta=tiny_model.config.beta).total.numpy()  # [T, V]
    k = 4
    served = client.search(texts, top_k=k)
    for t, hits in enumerate(served):
        order = np.argsort(-scores[t], kind="stable")[:k]
        assert [h.video_id for h in hits] == [ids[i] for i in order]
        np.testing.assert_allclose([h.score for h in hits], scores[t, order], atol=ATOL)
        for hit, v in zip(hits, order):  # best frame of each phrase prototype over the video's object prototypes
            sims = torch.einsum("pd,lod->plo", text.phrases[t], stored.objects[v]).flatten(1)
            assert hit.matched_frames == tuple((sims.argmax(1) // stored.objects.shape[2]).tolist())


def test_top_k_defaults_and_is_capped_by_the_gallery(client, published_gallery):
    _, ids, _, _ = published_gallery
    assert len(client.search("a blue circle", top_k=None)[0]) == min(P.DEFAULT_TOP_K, len(ids))
    assert len(client.search("a blue circle", top_k=2)[0]) == 2
    assert len(client.search(["one", "two", "three"], top_k=1000)[2]) == len(ids)


@pytest.mark.parametrize("texts_, top_k", [([""], 3), (["  "], 3), (["fine"], 0), (["fine"], -2), (["fine"], 10**6)])
def test_bad_search_requests_are_invalid_argument(client, published_gallery, texts_, top_k):
    with pytest.raises(errors.InvalidRequestError) as info:
        client.search(texts_, top_k=top_k)
    assert info.value.status == "INVALID_ARGUMENT"
    assert client.search("still fine", top_k=1)[0]


def test_wrong_top_k_dtype_and_malformed_video_are_invalid_argument(triton_server, client, synthetic_videos):
    raw = grpcclient.InferenceServerClient(triton_server.url)
    text = grpcclient.InferInput(P.TEXT, [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"a cat"]], dtype=np.object_))
    top_k = grpcclient.InferInput(P.TOP_K, [1, 1], "FP32")
    top_k.set_data_from_numpy(np.array([[3.0]], np.float32))
    with pytest.raises(InferenceServerException) as info:
        raw.infer(P.TEXT_SEARCH_MODEL, [text, top_k])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    for bad in (b"not a video at all", synthetic_videos[0].read_bytes()[:200]):
        with pytest.raises(errors.InvalidRequestError, match=P.VIDEO):
            client.encode_videos([bad])
    # (server readiness is briefly false while an old gallery version unloads after a publish; models stay ready)
    assert raw.is_server_live() and raw.is_model_ready(P.ENCODE_VIDEO_MODEL)
    assert client.encode_videos(synthetic_videos[:1])[0].shape[0] == 1


def test_direct_similarity_requests_are_bounded(triton_server, client, synthetic_videos):
    """prost_similarity cannot batch (T x V), so it takes at most the repository's largest batch (32) per side: 33
    texts get INVALID_ARGUMENT instead of a matrix that grows with the request."""
    phrases, sentence = client.encode_texts(["a red circle moves left"] * 33)
    objects, events = client.encode_videos(synthetic_videos[:1])
    raw = grpcclient.InferenceServerClient(triton_server.url)

    def request(texts: int):
        arrays = {P.PHRASE_PROTOTYPES: phrases[:texts], P.SENTENCE_EMBEDDING: sentence[:texts],
                  P.OBJECT_PROTOTYPES: objects, P.EVENT_PROTOTYPES: events, P.BETA: np.array([1.0], np.float32)}
        return raw.infer(P.SIMILARITY_MODEL, [wire.array_input(name, value) for name, value in arrays.items()])

    assert request(32).as_numpy(P.SIMILARITY).shape == (32, 1)
    with pytest.raises(InferenceServerException, match="has 33 items; this model takes at most 32") as info:
        request(33)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_bad_video_fails_only_its_own_request(triton_server, synthetic_videos):
    """Concurrent requests (batched together by the dynamic batcher when they coincide): bad ones fail alone."""
    good = synthetic_videos[1].read_bytes()

    async def run():
        async with AsyncProstClient(triton_server.url, timeout=60) as c:
            return await asyncio.gather(*(c.encode_videos([good if i % 2 else b"\0garbage" * 64])
                                          for i in range(8)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, errors.InvalidRequestError) for r in results[0::2])
    assert all(isinstance(r, tuple) and r[0].shape[0] == 1 for r in results[1::2])
    np.testing.assert_allclose(results[1][0], results[3][0], atol=1e-6)


def test_publishing_while_searching_fails_no_query(client, triton_server, published_gallery, model_repository,
                                                  onnx_dir):
    """Two new versions (local write, then upload) while a thread searches: no errors, same answers."""
    _, ids, objects, events = published_gallery
    before = client.search(["a green square disappears"], top_k=3)
    stop, failures, answers = threading.Event(), [], []

    def hammer():
        with ProstClient(triton_server.url, timeout=60) as c:
            while not stop.is_set():
                try:
                    answers.append(c.search(["a green square disappears"], top_k=3))
                except errors.ClientError as exc:
                    failures.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        first = client.publish_prototypes(ids, objects, events, repository=model_repository)
        second = client.publish_prototypes(ids, objects, events, similarity_onnx=onnx_dir / "similarity.onnx")
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures[:3]
    assert len(answers) > 0 and second == first + 1 == client.gallery_version()
    assert all([h.video_id for h in a[0]] == [h.video_id for h in before[0]] for a in answers)
    client.publish_prototypes(ids, objects, events, repository=model_repository)  # back to the repository's files


def test_empty_gallery_answers_no_results(client, published_gallery, model_repository):
    """An empty version (as the builder writes version 1) serves zero results; the same query is not cached."""
    _, ids, objects, events = published_gallery
    assert len(client.search("a purple cross moves up", top_k=3)[0]) == 3
    try:
        client.publish_prototypes([], objects[:0], events[:0], repository=model_repository)
        assert client.search(["a purple cross moves up", "x"], top_k=3) == [[], []]
    finally:
        client.publish_prototypes(ids, objects, events, repository=model_repository)
    assert len(client.search("a purple cross moves up", top_k=3)[0]) == 3


def test_a_corrupt_gallery_version_does_not_load_and_the_old_one_serves(client, triton_server, published_gallery,
                                                                       model_repository):
    """A definite load failure removes the version, also when it is only learnt after the load call timed out."""
    _, ids, objects, events = published_gallery
    served = client.gallery_version()
    with ProstClient(triton_server.url, timeout=60, load_timeout=0.3,
                     repository_key=triton_server.repository_key) as impatient:
        for publisher in (client, impatient):
            with pytest.raises(errors.ClientError,
                               match=r"load prost_gallery version \d+: .*dims objects \[8, 5, 128\].* do not match"):
                publisher.publish_prototypes(ids[:2], objects[:2, :, :-1], events[:2], repository=model_repository)
            assert client.gallery_version() == served
            assert G.versions(model_repository / P.GALLERY_MODEL)[-1] == served  # the failed version is removed
    assert len(client.search("a yellow cross", top_k=10)[0]) == len(ids)
    manifest = json.loads((model_repository / storage.MANIFEST_FILE).read_text())
    assert manifest["models"][P.GALLERY_MODEL]["latest"] == served


def test_a_gallery_from_another_video_encoder_does_not_load(client, published_gallery, model_repository, onnx_dir):
    """Prototypes stamped with another video encoder than the gallery's are refused, written locally or uploaded,
    and the served gallery stays."""
    _, ids, objects, events = published_gallery
    served = client.gallery_version()
    for where in ({"repository": model_repository}, {"similarity_onnx": onnx_dir / "similarity.onnx"}):
        with pytest.raises(errors.ClientError, match=r"encoded by video encoder 0+, this gallery serves [0-9a-f]{64}"):
            client.publish_prototypes(ids, objects, events, video_encoder="0" * 64, **where)
        assert client.gallery_version() == served == G.versions(model_repository / P.GALLERY_MODEL)[-1]
    assert len(client.search("a yellow cross", top_k=10)[0]) == len(ids)


def test_a_load_that_outlives_its_deadline_is_kept(triton_server, client, published_gallery, model_repository):
    """The load call times out while Triton still loads the version: it is kept and returned once ready."""
    _, ids, objects, events = published_gallery
    with ProstClient(triton_server.url, timeout=60, load_timeout=0.3,
                     repository_key=triton_server.repository_key) as impatient:
        version = impatient.publish_prototypes(ids, objects, events, repository=model_repository)
    assert client.gallery_version() == version == G.versions(model_repository / P.GALLERY_MODEL)[-1]
    assert len(client.search("a yellow cross", top_k=10)[0]) == len(ids)


def test_concurrent_publishers_both_succeed(triton_server, client, published_gallery, model_repository):
    """Two clients publish into the served repository at once: distinct versions, both loaded, no staging left."""
    _, ids, objects, events = published_gallery
    results, failures = {}, []

    def publish(name, count):
        try:
            with ProstClient(triton_server.url, timeout=60, repository_key=triton_server.repository_key) as c:
                results[name] = c.publish_prototypes(ids[:count], objects[:count], events[:count],
                                                     repository=model_repository)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=publish, args=(name, count)) for name, count in (("a", 3), ("b", len(ids)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert results["a"] != results["b"] and client.gallery_version() == max(results.values())
    model_dir = model_repository / P.GALLERY_MODEL
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".staging")]
    client.publish_prototypes(ids, objects, events, repository=model_repository)  # the session's gallery again


def test_publishing_keeps_only_the_newest_versions(client, published_gallery, model_repository):
    """keep_versions=2: after two more publishes the repository holds exactly the two newest versions, listed in its
    manifest, and the newest serves."""
    _, ids, objects, events = published_gallery
    published = [client.publish_prototypes(ids, objects, events, repository=model_repository, keep_versions=2)
                 for _ in range(2)]
    model_dir = model_repository / P.GALLERY_MODEL
    assert G.versions(model_dir) == published and client.gallery_version() == published[-1]
    manifest = json.loads((model_repository / "manifest.json").read_text())["models"][P.GALLERY_MODEL]
    assert manifest["versions"] == published
    assert client.search(["a red circle"], top_k=len(ids))[0]
    with pytest.raises(errors.ClientError, match="keep_versions must be >= 1"):
        client.publish_prototypes(ids, objects, events, repository=model_repository, keep_versions=0)
    with pytest.raises(errors.ClientError, match="keep_versions must be >= 1"):  # refused before any encoding
        client.publish_gallery([Path("/nonexistent.mp4")], ["x"], repository=model_repository, keep_versions=0)


def test_top_k_ties_keep_the_lower_index_at_the_boundary():
    scores = np.ones((2, 6), np.float32)
    scores[1, [1, 4]] = 2.0
    indices = np.broadcast_to(np.arange(6), scores.shape)
    empty_i, empty_s = np.zeros((2, 0), np.int64), np.zeros((2, 0), np.float32)
    top_i, top_s = merge_top_k(empty_i, empty_s, indices, scores, 4)
    assert top_i.tolist() == [[0, 1, 2, 3], [1, 4, 0, 2]]
    top_i, _ = merge_top_k(*merge_top_k(empty_i, empty_s, indices[:, :3], scores[:, :3], 2),
                           indices[:, 3:], scores[:, 3:], 2)  # chunked: same answer
    assert top_i.tolist() == [[0, 1], [1, 4]]


def test_tied_gallery_scores_rank_by_gallery_order(client, published_gallery, model_repository):
    _, ids, objects, events = published_gallery
    same_o = np.broadcast_to(objects[:1], objects.shape)
    same_e = np.broadcast_to(events[:1], events.shape)
    try:
        client.publish_prototypes(ids, same_o, same_e, repository=model_repository)
        hits = client.search("a tie", top_k=4)[0]
        assert [h.video_id for h in hits] == ids[:4] and len({h.score for h in hits}) == 1
    finally:
        client.publish_prototypes(ids, objects, events, repository=model_repository)


def test_repository_endpoints_need_the_key(triton_server, published_gallery):
    raw = grpcclient.InferenceServerClient(triton_server.url)
    with pytest.raises(InferenceServerException, match="restricted"):
        raw.load_model(P.GALLERY_MODEL)
    with ProstClient(triton_server.url, retries=0) as keyless:
        with pytest.raises(errors.PermissionDeniedError):
            keyless.publish_prototypes(*published_gallery[1:], similarity_onnx=b"unused")
        assert keyless.search("inference needs no key", top_k=1)[0]
    assert raw.is_model_ready(P.TEXT_SEARCH_MODEL)


def test_prost_serve_stops_cleanly_on_sigterm(model_repository, tmp_path):
    """`prost serve` as a process: SIGTERM during startup and once ready both exit 0 and leave no tritonserver or
    python-backend stub behind (found by the unique repository path in /proc/*/cmdline)."""
    from prost_model_repository.server import free_ports

    repo = tmp_path / "serve-repo"
    repo.mkdir()
    shutil.copytree(model_repository / P.TOKENIZER_MODEL, repo / P.TOKENIZER_MODEL)
    shutil.copy(model_repository / storage.MANIFEST_FILE, repo)  # a built repository (prost serve refuses others)
    for when in ("startup", "ready"):
        ports = free_ports(3)
        err = tmp_path / f"{when}.err"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "prost_cli.main", "serve", "--repository", str(repo),
                                     "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port",
                                     str(ports[2]), "--log-dir", str(tmp_path / when), "--grace", "20"],
                                    stderr=stderr)
        if when == "startup":  # tritonserver exists but is not ready yet
            wait_for(lambda: processes_using(repo), proc, err)
        else:
            wait_for(lambda: "ready in" in err.read_text(), proc, err)
            assert oct((repo / storage.KEY_FILE).stat().st_mode & 0o777) == "0o600"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, err.read_text()
        wait_for(lambda: not processes_using(repo), None, err)
        expected = "stopped during startup" if when == "startup" else "tritonserver exited with status"
        assert expected in err.read_text()
    assert not (repo / storage.KEY_FILE).exists()  # removed when the server stops


def test_prost_serve_reloads_a_model_whose_stub_was_killed(model_repository, tmp_path):
    """Triton keeps a model READY after its python-backend stub is killed and fails every request to it; `prost
    serve` notices the stub is gone and reloads the model, so search answers again."""
    from prost_model_repository.server import free_ports
    from prost_model_repository.watchdog import live_stubs

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    # As a repository served before: stubs find their bytecode, so nothing in a model directory changes after its
    # load, and a plain load request would not reload anything.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo)], check=True)
    ports = free_ports(3)
    err = tmp_path / "serve.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "prost_cli.main", "serve", "--repository", str(repo),
                                 "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port",
                                 str(ports[2]), "--log-dir", str(tmp_path / "logs"), "--stub-watchdog", "3",
                                 "--grace", "8"],  # Triton cannot finalize the dead instance: it stops at the timeout
                                stderr=stderr)
    try:
        wait_for(lambda: "ready in" in err.read_text(), proc, err)
        key = (repo / storage.KEY_FILE).read_text().strip()
        url = f"127.0.0.1:{ports[0]}"
        with ProstClient(url, timeout=60, repository_key=key) as c, ProstClient(url, timeout=60, retries=0) as raw:
            assert c.search("a red circle", top_k=3)
            server_pid = int(next(p for p in processes_using(repo) if "tritonserver " in p).split(":")[0])
            [stub] = [s.pid for key, s in live_stubs(server_pid).items() if key[0] == P.GALLERY_MODEL]
            os.kill(stub, signal.SIGKILL)
            with pytest.raises(errors.ServerError, match="is not healthy"):  # what a client without retries sees
                raw.search("a red circle moves", top_k=3)
            started = time.monotonic()
            assert c.search("a red circle moves left", top_k=3)  # the default client waits out the reload
            assert f"reloaded {P.GALLERY_MODEL} in" in err.read_text() and time.monotonic() - started < 60
            assert "stub prost_gallery_0_0 of prost_gallery died" in err.read_text()
            assert c.search("a red circle moves up", top_k=3)
            assert [key for key in live_stubs(server_pid) if key[0] == P.GALLERY_MODEL]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_prost_serve_restarts_a_killed_server_and_patient_callers_see_no_error(model_repository, tmp_path):
    """tritonserver killed with SIGKILL under `prost serve --restart-on-crash`: it is started again (logged); a caller
    whose deadline outlasts the restart gets its answer, one with a short deadline an error in time, not a hang."""
    from prost_model_repository.server import free_ports

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    ports = free_ports(3)
    err = tmp_path / "serve.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "prost_cli.main", "serve", "--repository", str(repo),
                                 "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port",
                                 str(ports[2]), "--restart-on-crash", "--grace", "8"], stderr=stderr)
    try:
        wait_for(lambda: "ready in" in err.read_text(), proc, err)
        url = f"127.0.0.1:{ports[0]}"
        with ProstClient(url, timeout=90) as patient, ProstClient(url, timeout=1.5) as hurried:
            assert patient.search("a red circle", top_k=3) and hurried.search("a blue square", top_k=3)
            server_pid = int(next(p for p in processes_using(repo) if "tritonserver " in p).split(":")[0])
            os.kill(server_pid, signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises((errors.UnavailableError, errors.DeadlineError)):
                hurried.search("a blue square moves", top_k=3)
            assert time.monotonic() - started < 10
            assert patient.search("a red circle moves left", top_k=3)
        assert "restarting it (1 of at most" in err.read_text() and "tritonserver restarted in" in err.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, err.read_text()


def processes_using(repository: Path) -> list[str]:
    """Live (not zombie) tritonserver and python-backend stub processes whose command line names `repository`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(repository) in cmdline and ("tritonserver" in cmdline or "triton_python_backend_stub" in cmdline) \
                and state != "Z":
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def wait_for(condition, proc, err: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"prost serve exited with {proc.returncode}: {err.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting; stderr: {err.read_text()}")
        time.sleep(0.1)
