"""prost_gallery: the gallery of one version directory, searched by `prost.gallery.engine` (exact, or two-stage
for large indexed versions; README: Gallery engine).

Inputs PHRASE_PROTOTYPES [Np, D], SENTENCE_EMBEDDING [D], optional TOP_K int32 [1] (one value per request);
outputs VIDEO_IDS [K], SCORES [K] (S = S_es + beta * S_op, best first) and MATCHED_FRAMES int32 [K, Np]: for each
result and phrase prototype, the frame of its best-matching object prototype. K = min(TOP_K, gallery size), so an
empty gallery answers K = 0. Scores come from `similarity.onnx` (the export's graph; the repository's copy takes the
fp16 prototypes as stored), or for a bf16 object store from torch's bf16 GEMM where it runs, over blocks of at most
BLOCK_ELEMENTS, so memory is bounded by the block and the memory-mapped version, not by the gallery size.

Parameters: BETA and VIDEO_ENCODER_SHA256 (required), DEFAULT_TOP_K, MAX_TOP_K, BLOCK_ELEMENTS, INTRA_OP_THREADS.
A missing, truncated or inconsistent gallery, or one stamped with another video encoder, raises in `initialize`
naming the file: that version does not load and the previous one keeps serving.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from prost.gallery.engine import GalleryEngine, OnnxScorer, make_scorer, similarity_session
from prost.gallery.store import load_version
from prost_client import gallery_format as G, protocol as P
from prost_model_repository import param_keys as K
from prost_model_repository.busy import marks_busy
from prost_model_repository.utils import ParameterError, dims, internal, invalid, model_config
from prost_model_repository.utils import param, param_float, param_int, parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        beta = param_float(params, P.BETA_PARAM)
        self.max_top_k = param_int(params, K.MAX_TOP_K, minimum=1)
        self.default_top_k = param_int(params, K.DEFAULT_TOP_K, minimum=1)
        if self.default_top_k > self.max_top_k:
            raise ParameterError(f"{K.DEFAULT_TOP_K}={self.default_top_k} exceeds {K.MAX_TOP_K}={self.max_top_k}")
        directory = version_dir(args)
        threads = param_int(params, K.INTRA_OP_THREADS, 0)
        session = similarity_session(directory / G.SIMILARITY_FILE, threads)
        graph = {i.name: i.shape for i in session.get_inputs()}
        # The repository's graph takes the fp16 prototypes as they are stored; an uploaded export graph, float32.
        objects_dims, events_dims = graph[P.OBJECT_PROTOTYPES][1:], graph[P.EVENT_PROTOTYPES][1:]
        if graph[P.PHRASE_PROTOTYPES][1:] != dims(config, P.PHRASE_PROTOTYPES):
            raise ParameterError(f"{P.PHRASE_PROTOTYPES} dims {dims(config, P.PHRASE_PROTOTYPES)} do not match "
                                 f"{G.SIMILARITY_FILE} {graph[P.PHRASE_PROTOTYPES]}")
        version = load_version(directory, objects_dims, events_dims, param(params, P.VIDEO_ENCODER_PARAM))
        block = param_int(params, K.BLOCK_ELEMENTS, minimum=1)
        scorer, scoring = make_scorer(version.objects_dtype, session, beta, block, threads)
        if isinstance(scorer, OnnxScorer) and scorer.takes_float32:
            pb_utils.Logger.log_warn(
                f"prost_gallery version {args['model_version']}: {G.SIMILARITY_FILE} takes float32 prototypes, so "
                f"every search converts the stored gallery in numpy (several times slower); upload the graph of a "
                f"built repository (prost_gallery/<N>/{G.SIMILARITY_FILE}) instead of the export's")
        self.engine = GalleryEngine(version, scorer, beta, block, threads)
        self.encoded_ids = np.array([v.encode("utf-8") for v in self.engine.ids], dtype=np.object_)
        pb_utils.Logger.log_info(f"prost_gallery version {args['model_version']}: {self.engine.size} videos, "
                                 f"{self.engine.mode} search, scored by {scoring}")

    @marks_busy
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
                work.append((i, phrases, sentence, min(next(iter(values)), self.engine.size)))
        if work:  # all valid requests of the dynamic batch in one pass over the gallery
            phrases = np.concatenate([w[1] for w in work])
            sentence = np.concatenate([w[2] for w in work])
            try:
                found = self.engine.search(phrases, sentence, max(w[3] for w in work))  # [T, K]
            except Exception as exc:  # noqa: BLE001 - answer every request instead of failing the stub's batch
                for i, *_ in work:
                    responses[i] = internal(f"scoring the gallery failed: {type(exc).__name__}: {exc}")
                return responses
            row = 0
            for i, p, _, k in work:
                rows = slice(row, row + len(p))
                try:
                    responses[i] = self._response(found.rows[rows, :k], found.scores[rows, :k], found.frames[rows, :k])
                except Exception as exc:  # noqa: BLE001 - this request fails alone
                    responses[i] = internal(f"building the response failed: {type(exc).__name__}: {exc}")
                row += len(p)
        return responses

    def _response(self, rows: np.ndarray, scores: np.ndarray, frames: np.ndarray):
        """VIDEO_IDS, SCORES and MATCHED_FRAMES of one request's [B, k] results."""
        b, k = rows.shape
        ids = self.encoded_ids[rows] if k else np.zeros((b, 0), dtype=np.object_)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(P.VIDEO_IDS, ids.reshape(b, k)),
            pb_utils.Tensor(P.SCORES, scores.astype(np.float32).reshape(b, k)),
            pb_utils.Tensor(P.MATCHED_FRAMES, frames.astype(np.int32)),
        ])
