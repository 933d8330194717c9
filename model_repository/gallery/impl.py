"""prost_gallery: the gallery of one version directory, scored against text prototypes by the exported graph.

Inputs PHRASE_PROTOTYPES [Np, D], SENTENCE_EMBEDDING [D], optional TOP_K int32 [1] (one value per request);
outputs VIDEO_IDS [K], SCORES [K] (S = S_es + beta * S_op, best first) and MATCHED_FRAMES int32 [K, Np]: for each
result and phrase prototype, the frame of its best-matching object prototype. K = min(TOP_K, gallery size), so an
empty gallery answers K = 0. Scoring runs `similarity.onnx` (the export's graph; the repository's copy takes the fp16
prototypes as stored) with ONNX Runtime over chunks of videos, keeping a running top-k, so memory is bounded by
BLOCK_ELEMENTS, not by the gallery size.

Parameters: BETA and VIDEO_ENCODER_SHA256 (required), DEFAULT_TOP_K, MAX_TOP_K, BLOCK_ELEMENTS, INTRA_OP_THREADS.
A missing or inconsistent gallery, or one stamped with another video encoder, raises in `initialize`: that version
does not load and the previous one keeps serving.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from prost_client import gallery_format as G, protocol as P
from prost_model_repository import param_keys as K
from prost_model_repository.gallery.ranking import merge_top_k
from prost_model_repository.utils import ParameterError, dims, internal, invalid, model_config, ort_session
from prost_model_repository.utils import param, param_float, param_int, parameters, version_dir


class GalleryError(ParameterError):
    """The version directory does not hold a valid gallery."""


def load_gallery(directory: Path, objects_dims: list[int], events_dims: list[int], video_encoder: str):
    """video ids, objects fp16 [N, L, No, D], events fp16 [N, Ne, D] of one version directory, validated, and
    encoded by `video_encoder` (the sha256 of the served video encoder's graph)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        ids = json.loads((directory / G.IDS_FILE).read_text())["video_ids"]
        stamp = G.safetensors_metadata(directory / G.TENSORS_FILE).get(G.ENCODER_STAMP)
        tensors = load_file(str(directory / G.TENSORS_FILE))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise GalleryError(f"cannot read the gallery in {directory}: {type(exc).__name__}: {exc}") from None
    if stamp is None:
        raise GalleryError(f"{directory / G.TENSORS_FILE} was written before galleries named their video encoder; run "
                           f"`prost repository build` on this repository again (it stamps the latest gallery when "
                           f"the export is unchanged), or re-index the videos (`prost-client index`)")
    if stamp != video_encoder:
        raise GalleryError(f"{directory / G.TENSORS_FILE} was encoded by video encoder {stamp}, this "
                           f"gallery serves {video_encoder}: its prototypes would not match the served text encoder; "
                           f"re-index the videos through the served models (`prost-client index`)")
    if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids) or len(set(ids)) != len(ids):
        raise GalleryError(f"{directory / G.IDS_FILE}: video_ids must be a list of unique strings")
    objects, events = tensors.get("objects"), tensors.get("events")
    if objects is None or events is None:
        raise GalleryError(f"{directory / G.TENSORS_FILE} must hold 'objects' and 'events'; has {sorted(tensors)}")
    expected = {"objects": [len(ids), *objects_dims], "events": [len(ids), *events_dims]}
    for name, array in (("objects", objects), ("events", events)):
        if list(array.shape) != expected[name]:
            raise GalleryError(f"{directory / G.TENSORS_FILE}: {name} has shape {list(array.shape)}, "
                               f"expected {expected[name]} ({len(ids)} video ids)")
    return ids, objects, events


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.beta = np.array([param_float(params, P.BETA_PARAM)], np.float32)
        self.max_top_k = param_int(params, K.MAX_TOP_K, minimum=1)
        self.default_top_k = param_int(params, K.DEFAULT_TOP_K, minimum=1)
        if self.default_top_k > self.max_top_k:
            raise ParameterError(f"{K.DEFAULT_TOP_K}={self.default_top_k} exceeds {K.MAX_TOP_K}={self.max_top_k}")
        self.block = param_int(params, K.BLOCK_ELEMENTS, minimum=1)
        directory = version_dir(args)
        self.session = ort_session(directory / G.SIMILARITY_FILE, param_int(params, K.INTRA_OP_THREADS, 0))
        graph = {i.name: i.shape for i in self.session.get_inputs()}
        # The repository's graph takes the fp16 prototypes as they are stored; an uploaded export graph, float32.
        self.bank_dtype = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32
                           for i in self.session.get_inputs() if i.name in (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)}
        if np.float32 in self.bank_dtype.values():
            pb_utils.Logger.log_warn(
                f"prost_gallery version {args['model_version']}: {G.SIMILARITY_FILE} takes float32 prototypes, so "
                f"every search converts the fp16 gallery in numpy (several times slower); upload the graph of a built "
                f"repository (prost_gallery/<N>/{G.SIMILARITY_FILE}) instead of the export's")
        objects_dims, events_dims = graph[P.OBJECT_PROTOTYPES][1:], graph[P.EVENT_PROTOTYPES][1:]
        if graph[P.PHRASE_PROTOTYPES][1:] != dims(config, P.PHRASE_PROTOTYPES):
            raise ParameterError(f"{P.PHRASE_PROTOTYPES} dims {dims(config, P.PHRASE_PROTOTYPES)} do not match "
                                 f"{G.SIMILARITY_FILE} {graph[P.PHRASE_PROTOTYPES]}")
        self.ids, self.objects, self.events = load_gallery(directory, objects_dims, events_dims,
                                                           param(params, P.VIDEO_ENCODER_PARAM))
        self.encoded_ids = np.array([v.encode("utf-8") for v in self.ids], dtype=np.object_)
        self.num_objects = objects_dims[1]
        pb_utils.Logger.log_info(f"prost_gallery version {args['model_version']}: {len(self.ids)} videos")

    def execute(self, requests):
        responses, work = [None] * len(requests), []
        for i, request in enumerate(requests):
            phrases = pb_utils.get_input_tensor_by_name(request, P.PHRASE_PROTOTYPES).as_numpy()  # [B, Np, D]
            sentence = pb_utils.get_input_tensor_by_name(request, P.SENTENCE_EMBEDDING).as_numpy()  # [B, D]
            top_k = pb_utils.get_input_tensor_by_name(request, P.TOP_K)
            values = {self.default_top_k} if top_k is None else {int(v) for v in top_k.as_numpy().reshape(-1)}
            if len(values) != 1:
                responses[i] = invalid(f"{P.TOP_K} must be one value per request, got {sorted(values)}")
            elif not 1 <= next(iter(values)) <= self.max_top_k:
                responses[i] = invalid(f"{P.TOP_K}={next(iter(values))} is outside [1, MAX_TOP_K={self.max_top_k}]")
            else:
                work.append((i, phrases, sentence, min(next(iter(values)), len(self.ids))))
        if work:  # all valid requests of the dynamic batch in one pass over the gallery
            phrases = np.concatenate([w[1] for w in work])
            sentence = np.concatenate([w[2] for w in work])
            try:
                top_idx, top_scores = self._top_k(phrases, sentence, max(w[3] for w in work))  # [T, K]
            except Exception as exc:  # noqa: BLE001 - answer every request instead of failing the stub's batch
                for i, *_ in work:
                    responses[i] = internal(f"scoring the gallery failed: {type(exc).__name__}: {exc}")
                return responses
            row = 0
            for i, p, _, k in work:
                rows = slice(row, row + len(p))
                try:
                    responses[i] = self._response(p, top_idx[rows, :k], top_scores[rows, :k])
                except Exception as exc:  # noqa: BLE001 - this request fails alone
                    responses[i] = internal(f"building the response failed: {type(exc).__name__}: {exc}")
                row += len(p)
        return responses

    def _top_k(self, phrases: np.ndarray, sentence: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores [T, k] of the best videos per text, best first (ties: lower index first)."""
        n_t, n_v = len(phrases), len(self.ids)
        best_i = np.zeros((n_t, 0), np.int64)
        best_s = np.zeros((n_t, 0), np.float32)
        if k == 0:
            return best_i, best_s
        # Elements per video of a chunk: its [T, Np, L, No] score block, or its float32 copy [L, No, D] + [Ne, D].
        per_video = max(n_t * phrases.shape[1] * int(np.prod(self.objects.shape[1:3])),
                        int(np.prod(self.objects.shape[1:])) + int(np.prod(self.events.shape[1:])))
        chunk = max(1, self.block // per_video)
        for v0 in range(0, n_v, chunk):
            bank = {P.OBJECT_PROTOTYPES: self.objects[v0:v0 + chunk], P.EVENT_PROTOTYPES: self.events[v0:v0 + chunk]}
            feed = {P.PHRASE_PROTOTYPES: phrases, P.SENTENCE_EMBEDDING: sentence, P.BETA: self.beta,
                    **{name: array.astype(self.bank_dtype[name], copy=False) for name, array in bank.items()}}
            scores = self.session.run([P.SIMILARITY], feed)[0]  # [T, c]
            indices = np.broadcast_to(np.arange(v0, v0 + scores.shape[1]), scores.shape)
            best_i, best_s = merge_top_k(best_i, best_s, indices, scores, k)
        return best_i, best_s

    def _response(self, phrases: np.ndarray, idx: np.ndarray, scores: np.ndarray):
        """VIDEO_IDS, SCORES and MATCHED_FRAMES of one request's [B, k] results."""
        b, k = idx.shape
        frames = np.zeros((b, k, phrases.shape[1]), np.int32)
        for t in range(b):  # one text at a time: [k, L, No, D] x [Np, D] -> [k, Np, L * No]
            if k:
                sims = np.einsum("klod,pd->kplo", self.objects[idx[t]].astype(np.float32), phrases[t])
                frames[t] = sims.reshape(k, phrases.shape[1], -1).argmax(-1) // self.num_objects
        ids = self.encoded_ids[idx] if k else np.zeros((b, 0), dtype=np.object_)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(P.VIDEO_IDS, ids.reshape(b, k)),
            pb_utils.Tensor(P.SCORES, scores.astype(np.float32).reshape(b, k)),
            pb_utils.Tensor(P.MATCHED_FRAMES, frames),
        ])
