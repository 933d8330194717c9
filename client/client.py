"""ProstClient and AsyncProstClient: search, encode, score and gallery publishing over Triton gRPC.

Imports only numpy, tritonclient[grpc], grpc and the standard library (no torch, no prost), so it installs anywhere;
publishing into a local served repository also uses the server's storage module (its lock protocol, and the gallery
writer of `prost gallery build`), imported only then.

Both clients share every decision. Each operation is written once, in `_Base`, as a plan: a generator that yields
the Triton calls it needs (a `Call`, a list of calls that may run concurrently, a `Sleep`, or local blocking `Work`)
and receives their results; a failed call is thrown into it as a ClientError. ProstClient runs plans with blocking
calls, AsyncProstClient with awaited ones (lists via asyncio.gather, work in a worker thread), so on AsyncProstClient
every public method returns an awaitable of what ProstClient's returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from prost_client import gallery_format as F, protocol as P, wire
from prost_client.errors import ClientError, InvalidRequestError, NotFoundError, PermissionDeniedError, UnavailableError
from prost_client.errors import from_triton
from prost_client.protocol import REPOSITORY_KEY_HEADER
from prost_client.wire import TLS, SearchHit, VideoSource

__all__ = ["AsyncProstClient", "ProstClient", "REPOSITORY_KEY_HEADER", "SearchHit", "TLS"]

# Models a client needs before it is "ready".
READY_MODELS = (P.TEXT_SEARCH_MODEL, P.ENCODE_TEXT_MODEL, P.ENCODE_VIDEO_MODEL, P.SIMILARITY_MODEL, P.SCORE_MODEL)
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Call:
    """One Triton call: an InferenceServerClient method, its keyword arguments, and the context of its errors."""

    method: str
    kwargs: dict = field(default_factory=dict)
    context: str = ""


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Work:
    """Local blocking work of a plan (writing a gallery version: FAISS encoding can take minutes): ProstClient runs
    it in place, AsyncProstClient in a worker thread, so its event loop keeps running."""

    function: Callable[[], Any]


Plan = Generator[Any, Any, Any]


class _Base:
    """Settings and every operation, as plans; subclasses only run them (`_run`)."""

    def __init__(self, url: str = "127.0.0.1:8001", *, timeout: float = 30.0, retries: int = 3,
                 repository_key: str | None = None, inference_key: str | None = None, tls: wire.TLS | None = None,
                 load_timeout: float = 300.0, text_batch_size: int = 32, video_batch_size: int = 4) -> None:
        """
        Args:
            url: host:port of Triton's gRPC endpoint.
            timeout: client deadline per call, in seconds.
            retries: gRPC-level retries with backoff on UNAVAILABLE (gRPC caps attempts at 5). Only reads and
                inference are retried, and only calls under `wire.PER_RPC_RETRY_BUFFER_BYTES` (16 MiB): gRPC does
                not retry larger messages (e.g. big video batches). Above that, inference is retried within its
                deadline while the server recovers (a dead backend stub, a restart; `wire.retry_delay`). 0 disables
                both.
            repository_key: the server's key for the restricted model-repository endpoints (load/unload, index).
            inference_key: the server's inference key (`prost serve --inference-key`), sent with every call.
            tls: connect over TLS (`wire.TLS`: the CA that signed the server's certificate, and for mutual TLS this
                client's certificate and key).
            load_timeout: deadline of a model load (publishing a gallery).
            text_batch_size, video_batch_size: items per request, lowered to the served max_batch_size (read from
                the server once) when larger.
        """
        if "://" in url or "/" in url:
            raise ClientError(f"the server URL is host:port, without a scheme or path (e.g. 127.0.0.1:8001); got "
                              f"{url!r}")
        self.url, self.timeout, self.load_timeout = url, timeout, load_timeout
        self.repository_key = repository_key or None  # an empty PROST_REPOSITORY_KEY is no key
        self.inference_key = inference_key or None
        self._tls_kwargs = tls.channel_kwargs() if tls is not None else {}
        self.text_batch_size, self.video_batch_size = text_batch_size, video_batch_size
        self._served_batch: tuple[int, int] | None = None  # (texts, videos) max_batch_size; None: not read yet
        self._channel_args = wire.channel_args(retries)
        self._retries = retries
        self._exported_beta: float | None = None  # None: prost_score's config not read yet
        self._server_seen = False  # a call has succeeded: UNAVAILABLE then means a restart, worth waiting for

    def _run(self, plan: Plan):
        raise NotImplementedError

    def _retry_delay(self, step: Call, outcome, started: float, previous: float | None) -> float | None:
        """None when `outcome` (a result, or the call's exception) is the answer; else the wait before trying `step`
        again, or the ClientError raised when it may not be retried (see wire.retry_delay)."""
        if isinstance(outcome, InferenceServerException):
            error = from_triton(outcome, step.context, self.url)
        else:
            self._server_seen = True
            error = wire.incomplete(step.kwargs, outcome) if step.method == "infer" else None
            if error is None:
                return None
        delay = wire.retry_delay(step.method, error, started, step.kwargs["client_timeout"], previous,
                                 self._server_seen) if self._retries else None
        if delay is None:
            raise error
        return delay

    # Public operations (AsyncProstClient: each returns an awaitable).

    def wait_ready(self, timeout: float = 60.0, models: Sequence[str] = READY_MODELS) -> None:
        """Block until the server is live and `models` are ready; UnavailableError names what is not."""
        return self._run(self._wait_ready(timeout, list(models)))

    def search(self, texts: str | Sequence[str], top_k: int | None = P.DEFAULT_TOP_K) -> list[list[SearchHit]]:
        """Top-k gallery videos per text, best first; `top_k=None` uses the server default."""
        return self._run(self._search(wire.as_texts(texts), top_k))

    def encode_texts(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Phrase prototypes [T, Np, D] and sentence embeddings [T, D] of texts."""
        return self._run(self._encode_texts(wire.as_texts(texts)))

    def encode_videos(self, videos: Sequence[VideoSource], *, batch_size: int | None = None,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Object prototypes [V, L, No, D] and event prototypes [V, Ne, D] of encoded video files (paths or bytes).

        A video that cannot be read, or that the server refuses (undecodable, over its limits), raises, naming it.
        """
        return self._run(self._encode_every_video(list(videos), batch_size, progress))

    def score(self, texts: str | Sequence[str], videos: Sequence[VideoSource], *,
              beta: float | None = None) -> np.ndarray:
        """S = S_es + beta * S_op [T, V] of every text against every video; `beta=None` uses the exported default.

        Each text and each video is encoded once. Videos are read, encoded and scored one chunk at a time against
        every text chunk, so memory holds one video chunk, not the whole list.
        """
        return self._run(self._score(wire.as_texts(texts), list(videos), beta))

    def publish_gallery(self, videos: Sequence[VideoSource], video_ids: Sequence[str] | None = None, *,
                        repository: Path | None = None, similarity_onnx: Path | bytes | None = None,
                        batch_size: int | None = None, progress: bool = True, keep_versions: int | None = 3,
                        on_invalid: Callable[[VideoSource, str], None] | None = None, incremental: bool = False,
                        remove: Sequence[str] = ()) -> int:
        """Encode `videos` through Triton and publish them as a NEW version of prost_gallery; returns the version.

        Without `on_invalid` the first video that cannot be read, or that the server refuses (undecodable, over its
        size or frame limits), raises, naming it, and nothing is published. With it, each such video is reported as
        on_invalid(video, reason) and left out of the gallery (publishing is refused when no video is left, unless
        the version removes ids). See `publish_prototypes` for the other arguments.
        """
        return self._run(self._publish_gallery(list(videos), video_ids, repository, similarity_onnx, batch_size,
                                               progress, keep_versions, on_invalid, _Change(incremental, remove)))

    def publish_prototypes(self, video_ids: Sequence[str], objects: np.ndarray, events: np.ndarray, *,
                           repository: Path | None = None, similarity_onnx: Path | bytes | None = None,
                           keep_versions: int | None = 3, video_encoder: str | None = None,
                           incremental: bool = False, remove: Sequence[str] = ()) -> int:
        """Publish encoded prototypes (fp16 on disk) as a new prost_gallery version; an empty list clears it.

        `video_encoder` is the sha256 of the video encoder that produced the prototypes (prost_video's
        VIDEO_ENCODER_SHA256 parameter when they were encoded); None takes the one served now. The gallery refuses
        to load prototypes stamped with another encoder than its own.

        With `repository` (the served repository on this machine) the version is written there by the writer of
        `prost gallery build`, streamed in chunks: a full version keeps the latest one's search parameters and
        turns two-stage at its `exact_below` size; `incremental=True` adds the videos to the latest version (an id
        it holds is replaced) and hides the ids in `remove`, hard-linking the segments it keeps and encoding only
        the new ones. The version is then loaded under the gallery's lock (held until the load settles, so
        concurrent publishers get successive versions; an incremental one is written under it too, so it starts
        from the newest version). Without `repository` every file is uploaded with Triton's load API (file
        overrides, needs `similarity_onnx`), as one exact segment: Triton keeps uploaded files in a temporary
        directory, so such a version is NOT durable (after a server restart the repository's latest version serves
        again), cannot be incremental, and concurrent uploads are not coordinated. A load that times out or loses
        the server is not taken as a failure: the version's state is polled, and a local version is removed only
        when Triton reports that it failed to load. Once the new local version is ready, only the newest
        `keep_versions` version directories stay in the repository (None: all).
        """
        return self._run(self._publish_prototypes(list(video_ids), objects, events, repository, similarity_onnx,
                                                  keep_versions, video_encoder, _Change(incremental, remove)))

    def gallery_version(self) -> int | None:
        """The highest served version of prost_gallery, or None when none is loaded."""
        return self._run(self._gallery_version())

    def reload_gallery(self) -> int | None:
        """Load prost_gallery again, so the server serves the newest version in its repository (one written by
        `prost gallery build --repository`); returns the served version. A version that fails to load raises
        ClientError with Triton's reason, and the previous one keeps serving."""
        return self._run(self._reload_gallery())

    # Plans.

    @property
    def _settle_seconds(self) -> float:
        """How long a publisher waits for another one's lock, or for a timed-out load to settle."""
        return max(self.load_timeout, self.timeout)

    def _call(self, method: str, context: str, **kwargs) -> Call:
        kwargs.setdefault("client_timeout", self.timeout)
        kwargs["headers"] = wire.with_inference_key(kwargs.get("headers"), self.inference_key)
        return Call(method, kwargs, context)

    def _infer(self, request: dict) -> Call:
        return self._call("infer", request["model_name"], **request)

    def _wait_ready(self, timeout: float, models: list[str]) -> Plan:
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = yield self._call("is_server_live", "live", client_timeout=min(5.0, self.timeout))
                ready = (yield [self._call("is_model_ready", m, model_name=m, client_timeout=5.0) for m in models]
                         ) if live else []
                waiting = [m for m, r in zip(models, ready) if not r]
                last = f"not ready: {', '.join(waiting)}" if live else "server not live"
            except ClientError as exc:
                live, last = False, str(exc)
            if live and not waiting:
                return
            if time.monotonic() > deadline:
                raise UnavailableError(f"{self.url} not ready after {timeout:.0f} s ({last})", "UNAVAILABLE")
            yield Sleep(POLL_SECONDS)

    def _search(self, texts: list[str], top_k: int | None) -> Plan:
        parts = wire.chunks(len(texts), (yield from self._per_call())[0])
        results = yield [self._infer(wire.search_request(texts[p], top_k)) for p in parts]
        return [hits for result in results for hits in wire.parse_search(result)]

    def _per_call(self, videos: int | None = None) -> Plan:
        """(texts, videos) per request: the requested sizes, lowered to the served ensembles' max_batch_size."""
        if self._served_batch is None:
            configs = yield [self._call("get_model_config", m, model_name=m, as_json=True)
                             for m in (P.ENCODE_TEXT_MODEL, P.ENCODE_VIDEO_MODEL)]
            self._served_batch = tuple(wire.max_batch_size(c["config"]) for c in configs)
        served_texts, served_videos = self._served_batch
        return min(self.text_batch_size, served_texts), min(videos or self.video_batch_size, served_videos)

    def _metadata(self, model: str) -> Call:
        return self._call("get_model_metadata", model, model_name=model, as_json=True)

    def _encode_texts(self, texts: list[str]) -> Plan:
        names = (P.PHRASE_PROTOTYPES, P.SENTENCE_EMBEDDING)
        if not texts:
            return wire.empty_outputs((yield self._metadata(P.ENCODE_TEXT_MODEL)), *names)
        per_call = (yield from self._per_call())[0]
        results = yield [self._infer(wire.encode_text_request(texts[p])) for p in wire.chunks(len(texts), per_call)]
        return tuple(np.concatenate([wire.output(r, n) for r in results]) for n in names)

    def _encode_every_video(self, videos: list[VideoSource], batch_size: int | None, progress: bool) -> Plan:
        """encode_videos: the prototypes of every video, or an error naming the first one that fails."""
        objects, events, _ = yield from self._encode_videos(videos, batch_size, progress, None)
        return objects, events

    def _encode_videos(self, videos: list[VideoSource], batch_size: int | None, progress: bool,
                       on_invalid: Callable[[VideoSource, str], None] | None) -> Plan:
        """(objects, events, kept): the prototypes of the videos that encoded, and their indices in `videos`
        (`on_invalid` as in publish_gallery)."""
        names = (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)
        encoded = []
        per_call = (yield from self._per_call(videos=batch_size))[1] if videos else 1
        with contextlib.closing(wire.progress_bar(len(videos), progress, "encode")) as bar:
            for part in wire.chunks(len(videos), per_call):  # one batch in memory at a time
                chunk = {}
                for i in range(part.start, part.stop):
                    try:
                        chunk[i] = wire.read_bytes(videos[i])
                    except ClientError as exc:
                        if on_invalid is None:
                            raise
                        on_invalid(videos[i], str(exc))
                encoded += yield from self._encode_chunk(chunk, videos, on_invalid)
                bar.update(part.stop - part.start)
        if not encoded:
            return (*wire.empty_outputs((yield self._metadata(P.ENCODE_VIDEO_MODEL)), *names), [])
        return (*(np.concatenate([wire.output(r, n) for _, r in encoded]) for n in names),
                [i for indices, _ in encoded for i in indices])

    def _encode_chunk(self, chunk: dict[int, bytes], videos: list[VideoSource],
                      on_invalid: Callable[[VideoSource, str], None] | None) -> Plan:
        """[(indices, result)] of one request; a request the server refuses is sent again one video at a time, to
        tell the invalid videos from the others."""
        if not chunk:
            return []
        try:
            return [(list(chunk), (yield self._infer(wire.encode_request(list(chunk.values())))))]
        except InvalidRequestError as exc:
            if len(chunk) == 1:
                [(i, data)] = chunk.items()
                source = videos[i] if isinstance(videos[i], (str, Path)) else f"videos[{i}] ({len(data)} bytes)"
                if on_invalid is None:
                    raise InvalidRequestError(f"{source}: {exc}", exc.status) from None
                on_invalid(videos[i], str(exc))
                return []
        encoded = []
        for i, data in chunk.items():
            encoded += yield from self._encode_chunk({i: data}, videos, on_invalid)
        return encoded

    def _score(self, texts: list[str], videos: list[VideoSource], beta: float | None) -> Plan:
        if beta is None:
            if self._exported_beta is None:
                config = yield self._call("get_model_config", P.SCORE_MODEL, model_name=P.SCORE_MODEL, as_json=True)
                self._exported_beta = wire.exported_beta(config["config"])
            beta = self._exported_beta
        if not texts or not videos:
            return np.zeros((len(texts), len(videos)), np.float32)
        texts_per_call, videos_per_call = yield from self._per_call()
        text = yield [self._infer(wire.encode_text_request(texts[p])) for p in wire.chunks(len(texts), texts_per_call)]
        columns = []
        for part in wire.chunks(len(videos), videos_per_call):  # one video chunk read and encoded at a time
            chunk = {i: wire.read_bytes(videos[i]) for i in range(part.start, part.stop)}
            [(_, video)] = yield from self._encode_chunk(chunk, videos, None)  # or raises, naming the bad video
            scores = yield [self._infer(wire.similarity_request(t, video, beta)) for t in text]
            columns.append(np.concatenate([wire.output(s, P.SIMILARITY) for s in scores]))
        return np.concatenate(columns, axis=1)

    def _publish_gallery(self, videos, video_ids, repository, similarity_onnx, batch_size, progress,
                         keep_versions, on_invalid, change: _Change) -> Plan:
        ids = wire.video_ids_for(videos, video_ids)
        _check_publish(videos, repository, similarity_onnx, keep_versions, change)  # before encoding
        key = yield from self._publish_key(repository)
        encoder = yield from self._video_encoder()
        objects, events, kept = yield from self._encode_videos(videos, batch_size, progress, on_invalid)
        if videos and not kept and not change.remove:
            raise ClientError(f"none of the {len(videos)} videos could be read and encoded; nothing was published")
        ids = [ids[i] for i in kept]
        if (yield from self._video_encoder()) != encoder:
            raise ClientError(f"{P.VIDEO_MODEL} was reloaded with another video encoder while the videos were being "
                              f"encoded; nothing was published, index them again")
        return (yield from self._publish(ids, objects, events, encoder, repository, similarity_onnx, keep_versions,
                                         key, change, progress))

    def _publish_prototypes(self, video_ids, objects, events, repository, similarity_onnx, keep_versions,
                            video_encoder, change: _Change) -> Plan:
        _check_publish(video_ids, repository, similarity_onnx, keep_versions, change)
        key = yield from self._publish_key(repository)
        if video_encoder is None:
            video_encoder = yield from self._video_encoder()
        return (yield from self._publish(video_ids, objects, events, video_encoder, repository, similarity_onnx,
                                         keep_versions, key, change, False))

    def _publish_key(self, repository: Path | None) -> Plan:
        """Before any work, the checks a publish needs; returns the repository key to send.

        With `repository`: it is the one the server serves (its id; this needs no key), this user can write it, and
        its key file gives the key when none was given. Then the key must open the model-repository endpoints.
        """
        key = self.repository_key
        if repository is not None:
            repository = Path(repository)
            if not (repository / P.GALLERY_MODEL).is_dir():
                raise ClientError(f"{repository} is not a model repository (no {P.GALLERY_MODEL} folder); pass the "
                                  f"repository the server was started on (`prost serve --repository DIR`)")
            config = yield self._call("get_model_config", P.GALLERY_MODEL, model_name=P.GALLERY_MODEL, as_json=True)
            served = (config["config"].get("parameters") or {}).get(P.REPOSITORY_ID_PARAM, {}).get("string_value")
            storage = _local_storage()
            with _storage_errors(storage):
                local = storage.read_manifest(repository).get("id")
                if served and served != local:
                    raise ClientError(f"{repository} is not the repository the server at {self.url} serves "
                                      f"(repository id {local or 'missing'}, served {served}); pass the folder given "
                                      f"to `prost serve --repository`")
                if not os.access(repository / P.GALLERY_MODEL, os.W_OK | os.X_OK):
                    raise ClientError(f"{repository / P.GALLERY_MODEL} is not writable by this user; publish as the "
                                      f"user that owns the repository")
                key = key or storage.read_key(repository)
        try:
            yield from self._gallery_states(key)
        except PermissionDeniedError:
            if key is None:
                raise PermissionDeniedError(
                    f"the server at {self.url} restricts publishing to holders of its repository key, and none was "
                    f"given: pass --repository-key (or set PROST_REPOSITORY_KEY), or --repository DIR on the "
                    f"server's machine, where `prost serve` wrote it") from None
            raise PermissionDeniedError(
                f"the server at {self.url} refused the repository key given (--repository-key, PROST_REPOSITORY_KEY "
                f"or the repository's key file): it is not the key of that server's `prost serve`") from None
        return key

    def _video_encoder(self) -> Plan:
        """The sha256 of the served video encoder's graph, from prost_video's config."""
        config = yield self._call("get_model_config", P.VIDEO_MODEL, model_name=P.VIDEO_MODEL, as_json=True)
        return wire.config_parameter(config["config"], P.VIDEO_ENCODER_PARAM, P.VIDEO_MODEL)

    def _publish(self, ids: list[str], objects: np.ndarray, events: np.ndarray, encoder: str,
                 repository: Path | None, similarity_onnx, keep_versions, key: str | None, change: _Change,
                 progress: bool) -> Plan:
        """Publish a gallery version, after `_publish_key`'s checks: written into `repository` by the server's gallery
        writer (a full version before taking the gallery's lock, an incremental one under it, from the newest version
        there), or uploaded as one exact segment; then loaded and settled under the lock."""
        if repository is None:
            files = F.gallery_files(ids, objects, events, video_encoder=encoder)
            known = yield from self._gallery_states(key)
            config = yield self._call("get_model_config", P.GALLERY_MODEL, model_name=P.GALLERY_MODEL, as_json=True)
            version = max(known, default=0) + 1
            yield from self._load(version, None, key, config=json.dumps(config["config"]),
                                  files=wire.upload_files(version, files, similarity_onnx))
            return version
        repository = Path(repository)
        model_dir = repository / P.GALLERY_MODEL
        storage = _local_storage()
        with _storage_errors(storage):
            staging = storage.new_staging(model_dir)
        write = Work(lambda: storage.write_gallery(staging, model_dir, ids, objects, events, video_encoder=encoder,
                                                   incremental=change.incremental, remove=change.remove,
                                                   progress=progress))
        try:
            if not change.incremental:  # a full version needs no base: written before taking the lock
                with _storage_errors(storage):
                    yield write
            lock = storage.DirectoryLock(model_dir, timeout=self._settle_seconds)
            deadline = time.monotonic() + lock.timeout
            while not lock.try_acquire():  # polled, so an asyncio loop keeps running while another publisher loads
                if time.monotonic() > deadline:
                    raise ClientError(str(lock.busy_error()))
                yield Sleep(POLL_SECONDS)
            try:
                known = yield from self._gallery_states(key)
                with _storage_errors(storage):
                    if change.incremental:
                        yield write
                    version = storage.commit_gallery(repository, P.GALLERY_MODEL, staging, max(known, default=0) + 1)
                yield from self._load(version, repository, key)
                if keep_versions is not None:
                    with _storage_errors(storage):
                        storage.prune_versions(repository, P.GALLERY_MODEL, keep_versions)
                return version
            finally:
                lock.release()
        finally:
            storage.discard_staging(staging)

    def _load(self, version: int, repository: Path | None, key: str | None, **upload) -> Plan:
        """Load prost_gallery and settle `version`: ready, or failed (a local version is then removed)."""
        context = f"load {P.GALLERY_MODEL} version {version}"
        try:
            yield self._call("load_model", context, model_name=P.GALLERY_MODEL, client_timeout=self.load_timeout,
                             headers=wire.key_headers(key), **upload)
        except ClientError as exc:
            if not wire.load_may_still_finish(exc):
                _unstage(repository, version)
                raise
            outcome, reason = yield from self._settle(version, key)
            if outcome is None:
                kept = f" and stays in {repository / P.GALLERY_MODEL}" if repository else ""
                raise type(exc)(f"{exc}; version {version} may still be loading ({reason}){kept}; it serves once "
                                f"loaded (see gallery_version())", exc.status) from None
            if outcome == "failed":
                _unstage(repository, version)
                raise ClientError(f"{context}: {reason}") from None
        ready = yield self._call("is_model_ready", P.GALLERY_MODEL, model_name=P.GALLERY_MODEL,
                                 model_version=str(version))
        if not ready:
            _unstage(repository, version)
            raise ClientError(f"{P.GALLERY_MODEL} version {version} was loaded but is not ready; see the server log")

    def _settle(self, version: int, key: str | None) -> Plan:
        """Poll the repository index until `version` is ready or failed; (outcome, reason), outcome None if unknown."""
        deadline = time.monotonic() + self._settle_seconds
        reason = "not listed yet"
        while time.monotonic() < deadline:
            try:
                state, reason = (yield from self._gallery_states(key)).get(version, ("", "not listed yet"))
                outcome = wire.load_outcome(state, reason)
                if outcome:
                    return outcome, reason
                reason = state.lower() or reason
            except ClientError as exc:
                reason = str(exc)
            yield Sleep(POLL_SECONDS)
        return None, reason

    def _gallery_states(self, key: str | None) -> Plan:
        """{version: (state, reason)} of every prost_gallery version the server knows, failed ones included."""
        index = yield self._call("get_model_repository_index", "repository index", as_json=True,
                                 headers=wire.key_headers(key))
        return wire.model_versions(index, P.GALLERY_MODEL)

    def _reload_gallery(self) -> Plan:
        yield self._call("load_model", f"load {P.GALLERY_MODEL}", model_name=P.GALLERY_MODEL,
                         client_timeout=self.load_timeout, headers=wire.key_headers(self.repository_key))
        return (yield from self._gallery_version())

    def _gallery_version(self) -> Plan:
        try:
            meta = yield self._metadata(P.GALLERY_MODEL)
        except NotFoundError:
            return None
        return max((int(v) for v in meta.get("versions", [])), default=None)


@dataclass(frozen=True)
class _Change:
    """How a published version relates to the latest: a full replacement, or incremental (videos added, `remove`
    hidden)."""

    incremental: bool = False
    remove: Sequence[str] = ()


def _check_publish(videos: Sequence, repository: Path | None, similarity_onnx, keep_versions: int | None,
                   change: _Change) -> None:
    """The argument checks of a publish (`videos`: those to add), before any call or encoding."""
    wire.check_keep_versions(keep_versions)
    if isinstance(change.remove, str):
        raise ClientError("remove takes a list of video ids, not one string")
    if change.remove and not change.incremental:
        raise ClientError("remove needs incremental=True (CLI: --incremental): a full version holds only the videos "
                          "given")
    if change.incremental and not videos and not change.remove:
        raise ClientError("an incremental version needs videos to add or ids to remove; nothing was published")
    if repository is None:
        if change.incremental:
            raise ClientError("an incremental version is written into the served repository: pass repository (CLI: "
                              "--repository, on the server's machine); an upload replaces the whole gallery")
        wire.upload_files(0, {}, similarity_onnx)  # fail before encoding when the graph is missing


def _local_storage():
    """The server's gallery storage (versions, locks, manifest, its gallery writer), for publishing into a local
    served repository: a publisher on the server's machine follows the server's lock protocol and writes the version
    `prost gallery build` would, so it uses the server's own code."""
    try:
        from prost_model_repository import storage
    except ImportError as exc:
        raise ClientError(f"publishing into a local repository needs the server package (prost-serve) installed "
                          f"({exc}); without `repository` the gallery is uploaded through Triton instead") from None
    return storage


@contextlib.contextmanager
def _storage_errors(storage):
    """Storage failures (a version that cannot be written, a damaged manifest, an unknown id to remove) as
    ClientError."""
    try:
        yield
    except storage.RepositoryError as exc:
        raise ClientError(str(exc)) from exc


def _unstage(repository: Path | None, version: int) -> None:
    """Remove a local version that definitely failed to load, so the repository matches what is served."""
    if repository is not None:
        storage = _local_storage()
        with _storage_errors(storage):
            storage.unstage_version(repository, P.GALLERY_MODEL, version)


class ProstClient(_Base):
    """Blocking client; thread-safe (one gRPC channel shared by all calls)."""

    def __init__(self, url: str = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._triton = grpcclient.InferenceServerClient(url, channel_args=self._channel_args, **self._tls_kwargs)

    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> ProstClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, plan: Plan):
        result, error = None, None
        while True:
            try:
                step = plan.send(result) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                result, error = self._perform(step), None
            except BaseException as exc:  # into the plan: its handlers decide, its `finally` (locks) always runs
                result, error = None, exc

    def _perform(self, step):
        if isinstance(step, list):
            return [self._perform(s) for s in step]
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, Work):
            return step.function()
        started, delay = time.monotonic(), None
        while True:  # a call, retried within its deadline while wire.retry_delay says so
            try:
                outcome = getattr(self._triton, step.method)(**wire.remaining(step.kwargs, started))
            except InferenceServerException as exc:
                outcome = exc
            delay = self._retry_delay(step, outcome, started, delay)
            if delay is None:
                return outcome
            time.sleep(delay)


class AsyncProstClient(_Base):
    """asyncio client (tritonclient.grpc.aio): ProstClient's methods, each returning an awaitable; create it inside
    the running loop."""

    def __init__(self, url: str = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._triton = grpcaio.InferenceServerClient(url, channel_args=self._channel_args, **self._tls_kwargs)

    async def close(self) -> None:
        await self._triton.close()

    async def __aenter__(self) -> AsyncProstClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _run(self, plan: Plan):
        result, error = None, None
        while True:
            try:
                step = plan.send(result) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                result, error = await self._perform(step), None
            except BaseException as exc:  # into the plan: its handlers decide, its `finally` (locks) always runs
                result, error = None, exc

    async def _perform(self, step):
        if isinstance(step, list):
            return list(await asyncio.gather(*(self._perform(s) for s in step)))
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, Work):
            return await asyncio.to_thread(step.function)
        started, delay = time.monotonic(), None
        while True:  # a call, retried within its deadline while wire.retry_delay says so
            try:
                outcome = await getattr(self._triton, step.method)(**wire.remaining(step.kwargs, started))
            except InferenceServerException as exc:
                outcome = exc
            delay = self._retry_delay(step, outcome, started, delay)
            if delay is None:
                return outcome
            await asyncio.sleep(delay)
