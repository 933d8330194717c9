"""End to end on a real tritonserver: served results equal the torch model's, bad requests fail alone, galleries
swap under load, and the model-repository endpoints need the key."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import prost
from prost.data.video import decode_video
from prost.model.prost import TextPrototypes, VideoPrototypes
from prost_client import errors, protocol as P
from prost_client.client import AsyncProstClient, ProstClient

ATOL = 1e-4


@pytest.fixture(scope="module")
def texts(synthetic_dataset) -> list[str]:
    captions = [json.loads(line)["caption"] for line in (synthetic_dataset / "captions.jsonl").read_text().splitlines()]
    return captions[:4] + ["a red circle moves left", "something else entirely"]


@pytest.fixture(scope="module")
def reference(tiny_model, synthetic_videos):
    """Prototypes of the synthetic videos computed in-process with the torch model (frames decoded as served)."""
    cfg = tiny_model.config
    frames = np.stack([decode_video(p, cfg.head.num_frames, cfg.vision.image_size).frames for p in synthetic_videos])
    with torch.no_grad():
        return tiny_model.encode_video(torch.from_numpy(frames))


def encode_texts(model, texts: list[str]) -> TextPrototypes:
    with torch.no_grad():
        return model.encode_text(torch.from_numpy(prost.tokenize(texts, model.config.max_words)))


def test_encode_equals_torch(client, reference, synthetic_videos):
    objects, events = client.encode_videos(synthetic_videos, batch_size=4)
    np.testing.assert_allclose(objects, reference.objects.numpy(), atol=ATOL)
    np.testing.assert_allclose(events, reference.events.numpy(), atol=ATOL)


def test_score_equals_torch(client, tiny_model, reference, synthetic_videos, texts):
    text = encode_texts(tiny_model, texts)
    for beta in (None, 2.5):
        served = client.score(texts, synthetic_videos, beta=beta)
        expected = prost.similarity(text, reference, beta=tiny_model.config.beta if beta is None else beta).total
        np.testing.assert_allclose(served, expected.numpy(), atol=ATOL)


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


def test_a_corrupt_gallery_version_does_not_load_and_the_old_one_serves(client, published_gallery,
                                                                       model_repository):
    _, ids, objects, events = published_gallery
    served = client.gallery_version()
    with pytest.raises(errors.ClientError, match="objects has shape"):
        client.publish_prototypes(ids[:2], objects[:2, :, :-1], events[:2], repository=model_repository)
    assert client.gallery_version() == served
    assert not (model_repository / P.GALLERY_MODEL / str(served + 1)).exists()  # the failed version is removed
    assert len(client.search("a yellow cross", top_k=10)[0]) == len(ids)


def test_repository_endpoints_need_the_key(triton_server, published_gallery):
    raw = grpcclient.InferenceServerClient(triton_server.url)
    with pytest.raises(InferenceServerException, match="restricted"):
        raw.load_model(P.GALLERY_MODEL)
    with ProstClient(triton_server.url, retries=0) as keyless:
        with pytest.raises(errors.PermissionDeniedError):
            keyless.publish_prototypes(*published_gallery[1:], similarity_onnx=b"unused")
        assert keyless.search("inference needs no key", top_k=1)[0]
    assert raw.is_model_ready(P.TEXT_SEARCH_MODEL)
