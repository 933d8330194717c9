"""Wire format: request builders, response parsers and the pure decisions shared by ProstClient and AsyncProstClient
(no network I/O here)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from prost_client import gallery_format as F, protocol as P
from prost_client.errors import ClientError, DeadlineError, ServerError, UnavailableError

VideoSource = str | Path | bytes

INT32_MAX = 2**31 - 1

# Methods retried on UNAVAILABLE: reads and inference (idempotent); never repository load/unload (a load that
# timed out may still finish on the server; the client then checks the version's state instead of loading again).
RETRIED_METHODS = ("ModelInfer", "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                   "ModelConfig", "ModelStatistics", "RepositoryIndex")
RETRYABLE_STATUS_CODES = ("UNAVAILABLE",)
# gRPC keeps a copy of each retryable call's messages, up to this many bytes (gRPC's default is 256 KiB); a call whose
# messages exceed it is committed after its first attempt and is NOT retried. 16 MiB covers text and prototype
# requests and small video batches; larger video uploads fail on the first UNAVAILABLE.
PER_RPC_RETRY_BUFFER_BYTES = 16 << 20


# Triton's python backend answers this, with INTERNAL, while a killed backend stub waits for `prost serve`'s watchdog
# to reload its model (about 1.5 s after two looks, 2 s apart).
STUB_NOT_HEALTHY = "is not healthy"
CRASHED_BEHIND = "a model behind it may have crashed"  # an ensemble's answer missing outputs, for the same reason
# ...or, when the missing outputs were the next step's inputs, the ensemble refusing that step (INVALID_ARGUMENT)
ENSEMBLE_STEP_STARVED = ("in ensemble", "expected number of inputs")
FIRST_RETRY_DELAY, MAX_RETRY_DELAY = 0.05, 1.0


def retry_delay(method: str, error: ClientError, started: float, timeout: float, previous: float | None,
                server_seen: bool) -> float | None:
    """Seconds to wait before trying a failed call again, or None to raise `error`.

    Only inference is retried (searches, encodes and scores are pure functions of their inputs), only for failures
    that recovery ends (a dead backend stub; UNAVAILABLE once this client has reached the server, as while
    `prost serve --restart-on-crash` restarts it), and only while the next try still fits in the call's deadline.
    """
    message = str(error)
    recoverable = ((error.status == "INTERNAL" and (STUB_NOT_HEALTHY in message or CRASHED_BEHIND in message))
                   or (error.status == "INVALID_ARGUMENT" and all(text in message for text in ENSEMBLE_STEP_STARVED))
                   or (server_seen and isinstance(error, UnavailableError)))
    delay = FIRST_RETRY_DELAY if previous is None else min(2 * previous, MAX_RETRY_DELAY)
    if method != "infer" or not recoverable or time.monotonic() + delay >= started + timeout:
        return None
    return delay


def remaining(kwargs: dict, started: float) -> dict:
    """A call's keyword arguments with client_timeout cut to what is left of its deadline (retries share it)."""
    left = kwargs["client_timeout"] - (time.monotonic() - started)
    return {**kwargs, "client_timeout": max(left, 0.001)}


@dataclass(frozen=True)
class SearchHit:
    """One search result: the video, its score S = S_es + beta * S_op, and per phrase prototype the best frame."""

    video_id: str
    score: float
    matched_frames: tuple[int, ...]


def channel_args(retries: int) -> list[tuple[str, object]]:
    """gRPC channel options: tritonclient's defaults (which `channel_args` replaces) plus a retry policy.

    Only UNAVAILABLE is retried, only on RETRIED_METHODS, and only calls whose messages fit in
    PER_RPC_RETRY_BUFFER_BYTES (see there).
    """
    args: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.max_receive_message_length", INT32_MAX),
        ("grpc.keepalive_time_ms", INT32_MAX),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 2),
        ("grpc.enable_retries", int(retries > 0)),
        ("grpc.per_rpc_retry_buffer_size", PER_RPC_RETRY_BUFFER_BYTES),
    ]
    if retries > 0:
        policy = {
            "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
        }
        names = [{"service": "inference.GRPCInferenceService", "method": m} for m in RETRIED_METHODS]
        args.append(("grpc.service_config", json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})))
    return args


@dataclass(frozen=True)
class TLS:
    """gRPC over TLS from the client's side (PEM files): `ca` verifies the server (None: the system's roots);
    `cert` and `key` identify this client to a server that asks for it (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def channel_kwargs(self) -> dict:
        """tritonclient's InferenceServerClient arguments for this TLS setting."""
        if (self.cert is None) != (self.key is None):
            raise ClientError("a client certificate needs both its cert and its key (--tls-cert and --tls-key)")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not Path(path).is_file():
                raise ClientError(f"TLS file {path} does not exist")
        return {"ssl": True, "root_certificates": None if self.ca is None else str(self.ca),
                "private_key": None if self.key is None else str(self.key),
                "certificate_chain": None if self.cert is None else str(self.cert)}


def key_headers(repository_key: str | None) -> dict[str, str] | None:
    return {P.GRPC_RESTRICTED_PREFIX + P.REPOSITORY_KEY_HEADER: repository_key} if repository_key else None


def with_inference_key(headers: dict[str, str] | None, inference_key: str | None) -> dict[str, str] | None:
    """A call's headers plus the inference key's, when the client has one."""
    if not inference_key:
        return headers
    return {**(headers or {}), P.GRPC_RESTRICTED_PREFIX + P.INFERENCE_KEY_HEADER: inference_key}


def as_texts(texts: str | Sequence[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise ClientError(f"texts must be strings, got {type(text).__name__}")
    return texts


def read_bytes(source: VideoSource) -> bytes:
    """Bytes as given, or the content of a file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {source}: {exc}") from exc


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


def bytes_input(name: str, items: Sequence[bytes | str]) -> grpcclient.InferInput:
    """A TYPE_STRING tensor [B, 1]."""
    data = np.array([[x.encode("utf-8") if isinstance(x, str) else x] for x in items], dtype=np.object_)
    tensor = grpcclient.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data.reshape(len(items), 1))
    return tensor


def array_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}[array.dtype]
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


def outputs(*names: str) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(n) for n in names]


def search_request(texts: list[str], top_k: int | None) -> dict:
    inputs = [bytes_input(P.TEXT, texts)]
    if top_k is not None:
        inputs.append(array_input(P.TOP_K, np.full((len(texts), 1), top_k, dtype=np.int32)))
    return {"model_name": P.TEXT_SEARCH_MODEL, "inputs": inputs,
            "outputs": outputs(P.VIDEO_IDS, P.SCORES, P.MATCHED_FRAMES)}


def output(result, name: str) -> np.ndarray:
    """One output of an infer result; ServerError when the answer lacks it (a model behind an ensemble crashed)."""
    array = result.as_numpy(name)
    if array is None:
        raise _crashed_behind(result, name)
    return array


def incomplete(kwargs: dict, result) -> ServerError | None:
    """The error of an infer result that lacks a requested output (an ensemble whose inner stub died mid-request
    answers so), or None."""
    for requested in kwargs.get("outputs") or ():
        if result.as_numpy(requested.name()) is None:
            return _crashed_behind(result, requested.name())
    return None


def _crashed_behind(result, name: str) -> ServerError:
    model = result.get_response().model_name
    return ServerError(f"{model} answered without {name}: {CRASHED_BEHIND} (see the server log)", "INTERNAL")


def parse_search(result) -> list[list[SearchHit]]:
    ids = output(result, P.VIDEO_IDS)  # [B, K] bytes
    scores = output(result, P.SCORES)  # [B, K]
    frames = output(result, P.MATCHED_FRAMES)  # [B, K, Np]
    return [[SearchHit(_text(ids[b, k]), float(scores[b, k]), tuple(int(f) for f in frames[b, k]))
             for k in range(ids.shape[1])] for b in range(ids.shape[0])]


def encode_request(videos: list[bytes]) -> dict:
    return {"model_name": P.ENCODE_VIDEO_MODEL, "inputs": [bytes_input(P.VIDEO, videos)],
            "outputs": outputs(P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)}


def encode_text_request(texts: list[str]) -> dict:
    return {"model_name": P.ENCODE_TEXT_MODEL, "inputs": [bytes_input(P.TEXT, texts)],
            "outputs": outputs(P.PHRASE_PROTOTYPES, P.SENTENCE_EMBEDDING)}


def similarity_request(text, video, beta: float) -> dict:
    """prost_similarity of one encode_text result (T texts) against one encode result (V videos): SIMILARITY [T, V]."""
    inputs = [array_input(name, output(result, name)) for result, name in (
        (text, P.PHRASE_PROTOTYPES), (text, P.SENTENCE_EMBEDDING), (video, P.OBJECT_PROTOTYPES),
        (video, P.EVENT_PROTOTYPES))]
    inputs.append(array_input(P.BETA, np.array([beta], dtype=np.float32)))
    return {"model_name": P.SIMILARITY_MODEL, "inputs": inputs, "outputs": outputs(P.SIMILARITY)}


def check_keep_versions(keep_versions: int | None) -> None:
    if keep_versions is not None and keep_versions < 1:
        raise ClientError(f"keep_versions must be >= 1 (the new version stays), got {keep_versions}")


def max_batch_size(config: dict) -> int:
    """A served model's max_batch_size from its JSON config; refuses a model that does not batch."""
    size = int(config.get("max_batch_size", 0))
    if size < 1:
        raise ClientError(f"{config.get('name', 'model')} does not batch (max_batch_size {size}); rebuild the "
                          f"repository with `prost repository build`")
    return size


def config_parameter(config: dict, key: str, model: str) -> str:
    """A string parameter of a served model config (JSON), written by `prost repository build`."""
    value = (config.get("parameters") or {}).get(key, {}).get("string_value", "")
    if not value:
        raise ClientError(f"{model} has no {key} parameter; rebuild the repository with `prost repository build`")
    return value


def exported_beta(score_config: dict) -> float:
    """The exported beta, from prost_score's `parameters` (or pass beta to score())."""
    raw = config_parameter(score_config, P.BETA_PARAM, P.SCORE_MODEL)
    try:
        return float(raw)
    except ValueError:
        raise ClientError(f"{P.SCORE_MODEL} has a {P.BETA_PARAM} parameter that is not a number: {raw!r}") from None


def video_ids_for(videos: Sequence[VideoSource], video_ids: Sequence[str] | None) -> list[str]:
    """Ids default to file stems; bytes need explicit ids."""
    if video_ids is not None:
        if len(video_ids) != len(videos):
            raise ClientError(f"{len(video_ids)} video ids for {len(videos)} videos")
        return [str(v) for v in video_ids]
    if any(isinstance(v, (bytes, bytearray, memoryview)) for v in videos):
        raise ClientError("video_ids are required when videos are given as bytes")
    return [Path(v).stem for v in videos]


def upload_files(version: int, files: dict[str, bytes], similarity_onnx: Path | bytes | None) -> dict[str, bytes]:
    """Triton file overrides `file:<version>/<name>` of every file of a gallery version (data, model.py, graph)."""
    if similarity_onnx is None:
        raise ClientError("publishing without the served repository uploads every file of the gallery model: "
                          "pass similarity_onnx (CLI: --similarity-onnx; prost_gallery/<N>/similarity.onnx of the "
                          "built repository), or "
                          "repository (CLI: --repository, the served repository on this machine)")
    files = {**files, F.MODEL_FILE: F.MODEL_SOURCE.encode(),
             F.SIMILARITY_FILE: read_bytes(similarity_onnx)}
    return {f"file:{version}/{name}": data for name, data in files.items()}


def empty_outputs(metadata: dict, *names: str) -> tuple[np.ndarray, ...]:
    """Zero-item float32 arrays with the shapes a served model reports ([-1] + dims) for its outputs `names`."""
    shapes = {o["name"]: [int(d) for d in o["shape"]] for o in metadata["outputs"]}
    return tuple(np.zeros([0] + shapes[name][1:], dtype=np.float32) for name in names)


def model_versions(index: dict, model: str) -> dict[int, tuple[str, str]]:
    """{version: (state, reason)} of `model` in a repository index (as_json), every state included."""
    return {int(m["version"]): (m.get("state", ""), m.get("reason", "").split("\n\nAt:")[0])  # no traceback
            for m in index.get("models", []) if m.get("name") == model and str(m.get("version", "")).isdigit()}


def load_may_still_finish(error: ClientError) -> bool:
    """A load call that timed out or lost the server may still complete there: not a definite failure."""
    return isinstance(error, (DeadlineError, UnavailableError))


def load_outcome(state: str, reason: str) -> str | None:
    """Outcome of a load from an index entry: "ready", "failed" (`reason` says why) or None (not settled yet).

    UNAVAILABLE with reason "unloaded" is a version that loaded and was replaced, so it is not a failure.
    """
    if state == "READY":
        return "ready"
    if state == "UNAVAILABLE" and reason and reason != "unloaded":
        return "failed"
    return None


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar when tqdm is installed and enabled, else a no-op with the same interface."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="video")
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
