"""ProstClient and AsyncProstClient: search, encode, score and gallery publishing over Triton gRPC.

Imports only numpy, tritonclient[grpc], grpc and the standard library (no torch, no prost), so it installs anywhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from prost_client import gallery, protocol as P, wire
from prost_client.errors import ClientError, NotFoundError, UnavailableError, from_triton
from prost_client.wire import REPOSITORY_KEY_HEADER, SearchHit, VideoSource

__all__ = ["AsyncProstClient", "ProstClient", "REPOSITORY_KEY_HEADER", "SearchHit"]

# Models a client needs before it is "ready".
READY_MODELS = (P.TEXT_SEARCH_MODEL, P.ENCODE_VIDEO_MODEL, P.SCORE_MODEL)


class _Base:
    """Settings and the pure (no-I/O) parts of publishing, shared by both clients."""

    def __init__(self, url: str = "127.0.0.1:8001", *, timeout: float = 30.0, retries: int = 3,
                 repository_key: str | None = None, load_timeout: float = 300.0, text_batch_size: int = 32,
                 video_batch_size: int = 4) -> None:
        """
        Args:
            url: host:port of Triton's gRPC endpoint.
            timeout: client deadline per call, in seconds.
            retries: gRPC-level retries with backoff on UNAVAILABLE (0 disables; gRPC caps attempts at 5).
            repository_key: the server's key for the restricted model-repository endpoints (load/unload).
            load_timeout: deadline of a model load (publishing a gallery).
            text_batch_size, video_batch_size: items per request; must not exceed the served max_batch_size.
        """
        self.url, self.timeout, self.load_timeout = url, timeout, load_timeout
        self.repository_key = repository_key
        self.text_batch_size, self.video_batch_size = text_batch_size, video_batch_size
        self._channel_args = wire.channel_args(retries)
        self._score_beta: float | None | bool = False  # False: prost_score's config not read yet

    def _beta_from_config(self, config: dict) -> float | None:
        """None when prost_score's BETA input is optional (the server applies the exported beta; cpu variant),
        else the exported beta from its parameters (ORT/TensorRT graphs need BETA fed)."""
        entry = next((i for i in config.get("input", []) if i["name"] == P.BETA), None)
        if entry is None or entry.get("optional"):
            return None
        return float(config["parameters"]["BETA"]["string_value"])

    def _stage_local(self, repository: Path, files: dict[str, bytes], served: int | None) -> int:
        """Write a new gallery version into a local repository (model.py and similarity.onnx from the latest).

        The version is above both the repository's and the served one (which an upload may have set): Triton's
        response cache is keyed by version, so a number must never be reused for different content.
        """
        model_dir = Path(repository) / P.GALLERY_MODEL
        existing = gallery.versions(model_dir)
        if not existing:
            raise ClientError(f"{model_dir} has no version directory; build it with `prost repository build`")
        latest = model_dir / str(existing[-1])
        for name in (gallery.MODEL_FILE, gallery.SIMILARITY_FILE):
            if not (latest / name).is_file():
                raise ClientError(f"{latest / name} is missing; rebuild the repository with `prost repository build`")
            files[name] = (latest / name).read_bytes()
        version = gallery.write_version(model_dir, files, minimum=(served or 0) + 1)
        gallery.update_manifest(Path(repository), P.GALLERY_MODEL)
        return version

    @staticmethod
    def _unstage_local(repository: Path, version: int) -> None:
        """Remove a version whose load failed, so the repository matches what is served."""
        gallery.remove_version(Path(repository) / P.GALLERY_MODEL, version)
        gallery.update_manifest(Path(repository), P.GALLERY_MODEL)

    @staticmethod
    def _upload_files(files: dict[str, bytes], similarity_onnx: Path | bytes | None) -> dict[str, bytes]:
        if similarity_onnx is None:
            raise ClientError("publishing without the served repository uploads every file of the gallery model: "
                              "pass similarity_onnx (CLI: --similarity-onnx, the export's similarity.onnx), or "
                              "repository (CLI: --repository, the served repository on this machine)")
        files[gallery.MODEL_FILE] = gallery.MODEL_SOURCE.encode()
        files[gallery.SIMILARITY_FILE] = wire.read_bytes(similarity_onnx)
        return files


class ProstClient(_Base):
    """Blocking client; thread-safe (one gRPC channel shared by all calls)."""

    def __init__(self, url: str = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._triton = grpcclient.InferenceServerClient(url, channel_args=self._channel_args)

    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> ProstClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, context: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise from_triton(exc, context) from None

    def _infer(self, request: dict):
        return self._call(request["model_name"], self._triton.infer, client_timeout=self.timeout, **request)

    def wait_ready(self, timeout: float = 60.0, models: Sequence[str] = READY_MODELS) -> None:
        """Block until the server is live and `models` are ready; UnavailableError names what is not."""
        deadline = time.monotonic() + timeout
        while True:
            waiting, last = list(models), "server not live"
            try:
                if self._triton.is_server_live(client_timeout=min(5.0, self.timeout)):
                    waiting = [m for m in models if not self._triton.is_model_ready(m, client_timeout=5.0)]
                    last = f"not ready: {', '.join(waiting)}"
            except InferenceServerException as exc:
                last = str(exc)
            if not waiting and last != "server not live":
                return
            if time.monotonic() > deadline:
                raise UnavailableError(f"{self.url} not ready after {timeout:.0f} s ({last})", "UNAVAILABLE")
            time.sleep(0.25)

    def search(self, texts: str | Sequence[str], top_k: int | None = P.DEFAULT_TOP_K) -> list[list[SearchHit]]:
        """Top-k gallery videos per text, best first; `top_k=None` uses the server default."""
        texts = wire.as_texts(texts)
        hits: list[list[SearchHit]] = []
        for part in wire.chunks(len(texts), self.text_batch_size):
            hits += wire.parse_search(self._infer(wire.search_request(texts[part], top_k)))
        return hits

    def encode_videos(self, videos: Sequence[VideoSource], *, batch_size: int | None = None,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Object prototypes [V, L, No, D] and event prototypes [V, Ne, D] of encoded video files (paths or bytes)."""
        videos = list(videos)
        if not videos:
            meta = self._call(P.ENCODE_VIDEO_MODEL, self._triton.get_model_metadata, P.ENCODE_VIDEO_MODEL,
                              as_json=True, client_timeout=self.timeout)
            return wire.empty_prototypes(meta)
        objects, events = [], []
        bar = wire.progress_bar(len(videos), progress, "encode")
        try:
            for part in wire.chunks(len(videos), batch_size or self.video_batch_size):
                result = self._infer(wire.encode_request([wire.read_bytes(v) for v in videos[part]]))
                objects.append(result.as_numpy(P.OBJECT_PROTOTYPES))
                events.append(result.as_numpy(P.EVENT_PROTOTYPES))
                bar.update(part.stop - part.start)
        finally:
            bar.close()
        return np.concatenate(objects), np.concatenate(events)

    def score(self, texts: str | Sequence[str], videos: Sequence[VideoSource], *,
              beta: float | None = None) -> np.ndarray:
        """S = S_es + beta * S_op [T, V] of every text against every video; `beta=None` uses the exported default."""
        texts, data = wire.as_texts(texts), [wire.read_bytes(v) for v in videos]
        if beta is None:
            if self._score_beta is False:
                self._score_beta = self._beta_from_config(self._call(
                    P.SCORE_MODEL, self._triton.get_model_config, P.SCORE_MODEL, as_json=True,
                    client_timeout=self.timeout)["config"])
            beta = self._score_beta
        rows = []
        for tp in wire.chunks(len(texts), self.text_batch_size):
            cols = [self._infer(wire.score_request(texts[tp], data[vp], beta)).as_numpy(P.SIMILARITY)
                    for vp in wire.chunks(len(data), self.video_batch_size)]
            rows.append(np.concatenate(cols, axis=1) if cols else np.zeros((tp.stop - tp.start, 0), np.float32))
        return np.concatenate(rows) if rows else np.zeros((0, len(data)), np.float32)

    def publish_gallery(self, videos: Sequence[VideoSource], video_ids: Sequence[str] | None = None, *,
                        repository: Path | None = None, similarity_onnx: Path | bytes | None = None,
                        batch_size: int | None = None, progress: bool = True) -> int:
        """Encode `videos` through Triton and publish them as a NEW version of prost_gallery; returns the version.

        With `repository` (the served repository on this machine) the version is written there, then loaded; without
        it every file is uploaded with Triton's load API (file overrides), which needs `similarity_onnx`.
        """
        ids = wire.video_ids_for(videos, video_ids)
        if repository is None and similarity_onnx is None:
            self._upload_files({}, None)  # fail before encoding
        objects, events = self.encode_videos(videos, batch_size=batch_size, progress=progress)
        return self.publish_prototypes(ids, objects, events, repository=repository, similarity_onnx=similarity_onnx)

    def publish_prototypes(self, video_ids: Sequence[str], objects: np.ndarray, events: np.ndarray, *,
                           repository: Path | None = None, similarity_onnx: Path | bytes | None = None) -> int:
        """Publish already encoded prototypes (fp16 on disk) as a new gallery version; an empty list clears it."""
        files = gallery.gallery_files(video_ids, objects, events)
        headers = wire.key_headers(self.repository_key)
        if repository is not None:
            version = self._stage_local(repository, files, self.gallery_version())
            try:
                self._call("load", self._triton.load_model, P.GALLERY_MODEL, headers=headers,
                           client_timeout=self.load_timeout)
            except ClientError:
                self._unstage_local(repository, version)
                raise
        else:
            files = self._upload_files(files, similarity_onnx)
            config = self._call(P.GALLERY_MODEL, self._triton.get_model_config, P.GALLERY_MODEL, as_json=True,
                                client_timeout=self.timeout)["config"]
            version = (self.gallery_version() or 0) + 1
            self._call("load", self._triton.load_model, P.GALLERY_MODEL, headers=headers, config=json.dumps(config),
                       files=wire.upload_files(version, files), client_timeout=self.load_timeout)
        if not self._triton.is_model_ready(P.GALLERY_MODEL, str(version), client_timeout=self.timeout):
            raise ClientError(f"{P.GALLERY_MODEL} version {version} was loaded but is not ready; see the server log")
        return version

    def gallery_version(self) -> int | None:
        """The highest served version of prost_gallery, or None when none is loaded."""
        try:
            meta = self._call(P.GALLERY_MODEL, self._triton.get_model_metadata, P.GALLERY_MODEL, as_json=True,
                              client_timeout=self.timeout)
        except NotFoundError:
            return None
        return max((int(v) for v in meta.get("versions", [])), default=None)


class AsyncProstClient(_Base):
    """asyncio client (tritonclient.grpc.aio) with the methods of ProstClient; create it inside the running loop."""

    def __init__(self, url: str = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._triton = grpcaio.InferenceServerClient(url, channel_args=self._channel_args)

    async def close(self) -> None:
        await self._triton.close()

    async def __aenter__(self) -> AsyncProstClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, context: str, fn, *args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise from_triton(exc, context) from None

    async def _infer(self, request: dict):
        return await self._call(request["model_name"], self._triton.infer, client_timeout=self.timeout, **request)

    async def wait_ready(self, timeout: float = 60.0, models: Sequence[str] = READY_MODELS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting, last = list(models), "server not live"
            try:
                if await self._triton.is_server_live(client_timeout=min(5.0, self.timeout)):
                    waiting = [m for m in models if not await self._triton.is_model_ready(m, client_timeout=5.0)]
                    last = f"not ready: {', '.join(waiting)}"
            except InferenceServerException as exc:
                last = str(exc)
            if not waiting and last != "server not live":
                return
            if time.monotonic() > deadline:
                raise UnavailableError(f"{self.url} not ready after {timeout:.0f} s ({last})", "UNAVAILABLE")
            await asyncio.sleep(0.25)

    async def search(self, texts: str | Sequence[str], top_k: int | None = P.DEFAULT_TOP_K) -> list[list[SearchHit]]:
        texts = wire.as_texts(texts)
        parts = list(wire.chunks(len(texts), self.text_batch_size))
        results = await asyncio.gather(*(self._infer(wire.search_request(texts[p], top_k)) for p in parts))
        return [hits for result in results for hits in wire.parse_search(result)]

    async def encode_videos(self, videos: Sequence[VideoSource], *, batch_size: int | None = None,
                            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        videos = list(videos)
        if not videos:
            meta = await self._call(P.ENCODE_VIDEO_MODEL, self._triton.get_model_metadata, P.ENCODE_VIDEO_MODEL,
                                    as_json=True, client_timeout=self.timeout)
            return wire.empty_prototypes(meta)
        objects, events = [], []
        bar = wire.progress_bar(len(videos), progress, "encode")
        try:
            for part in wire.chunks(len(videos), batch_size or self.video_batch_size):
                result = await self._infer(wire.encode_request([wire.read_bytes(v) for v in videos[part]]))
                objects.append(result.as_numpy(P.OBJECT_PROTOTYPES))
                events.append(result.as_numpy(P.EVENT_PROTOTYPES))
                bar.update(part.stop - part.start)
        finally:
            bar.close()
        return np.concatenate(objects), np.concatenate(events)

    async def score(self, texts: str | Sequence[str], videos: Sequence[VideoSource], *,
                    beta: float | None = None) -> np.ndarray:
        texts, data = wire.as_texts(texts), [wire.read_bytes(v) for v in videos]
        if beta is None:
            if self._score_beta is False:
                self._score_beta = self._beta_from_config((await self._call(
                    P.SCORE_MODEL, self._triton.get_model_config, P.SCORE_MODEL, as_json=True,
                    client_timeout=self.timeout))["config"])
            beta = self._score_beta
        rows = []
        for tp in wire.chunks(len(texts), self.text_batch_size):
            results = await asyncio.gather(*(self._infer(wire.score_request(texts[tp], data[vp], beta))
                                             for vp in wire.chunks(len(data), self.video_batch_size)))
            cols = [r.as_numpy(P.SIMILARITY) for r in results]
            rows.append(np.concatenate(cols, axis=1) if cols else np.zeros((tp.stop - tp.start, 0), np.float32))
        return np.concatenate(rows) if rows else np.zeros((0, len(data)), np.float32)

    async def publish_gallery(self, videos: Sequence[VideoSource], video_ids: Sequence[str] | None = None, *,
                              repository: Path | None = None, similarity_onnx: Path | bytes | None = None,
                              batch_size: int | None = None, progress: bool = True) -> int:
        ids = wire.video_ids_for(videos, video_ids)
        if repository is None and similarity_onnx is None:
            self._upload_files({}, None)  # fail before encoding
        objects, events = await self.encode_videos(videos, batch_size=batch_size, progress=progress)
        return await self.publish_prototypes(ids, objects, events, repository=repository,
                                             similarity_onnx=similarity_onnx)

    async def publish_prototypes(self, video_ids: Sequence[str], objects: np.ndarray, events: np.ndarray, *,
                                 repository: Path | None = None, similarity_onnx: Path | bytes | None = None) -> int:
        files = gallery.gallery_files(video_ids, objects, events)
        headers = wire.key_headers(self.repository_key)
        if repository is not None:
            version = self._stage_local(repository, files, await self.gallery_version())
            try:
                await self._call("load", self._triton.load_model, P.GALLERY_MODEL, headers=headers,
                                 client_timeout=self.load_timeout)
            except ClientError:
                self._unstage_local(repository, version)
                raise
        else:
            files = self._upload_files(files, similarity_onnx)
            config = (await self._call(P.GALLERY_MODEL, self._triton.get_model_config, P.GALLERY_MODEL,
                                       as_json=True, client_timeout=self.timeout))["config"]
            version = (await self.gallery_version() or 0) + 1
            await self._call("load", self._triton.load_model, P.GALLERY_MODEL, headers=headers,
                             config=json.dumps(config), files=wire.upload_files(version, files),
                             client_timeout=self.load_timeout)
        if not await self._triton.is_model_ready(P.GALLERY_MODEL, str(version), client_timeout=self.timeout):
            raise ClientError(f"{P.GALLERY_MODEL} version {version} was loaded but is not ready; see the server log")
        return version

    async def gallery_version(self) -> int | None:
        try:
            meta = await self._call(P.GALLERY_MODEL, self._triton.get_model_metadata, P.GALLERY_MODEL, as_json=True,
                                    client_timeout=self.timeout)
        except NotFoundError:
            return None
        return max((int(v) for v in meta.get("versions", [])), default=None)
