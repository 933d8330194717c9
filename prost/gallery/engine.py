"""The gallery engine: top-k videos per text, shared by the prost_gallery Triton model and `prost gallery search`.

Exact mode scores every video with the exported similarity graph over blocks of the memory-mapped fp16 store (as the
gallery always did). Two-stage mode, for versions with an index and at least `exact_below` videos:
  1. candidates: the `candidates` best videos by S_es (a maximum inner product over each video's Ne event vectors):
     an exhaustive fast-scan of 4-bit PQ codes proposes `events_refine` times as many event vectors, re-scored exactly
     from the stored events, ids deduplicated; united with the `candidates` best by centroid interaction among
     the videos listed under the `nprobe` object centroids nearest to the phrases (PLAID; pruned by their postings
     first when they would take more than `interaction` centroid lookups), so videos that win on objects are not lost;
  2. approximate S = S_es (exact, from the stored events) + beta * S_op from the object codes (IVF coarse centroid +
     PQ residual, ColBERTv2's compression), decoded for the candidates only;
  3. the best `rerank` by approximate S are scored exactly by the similarity graph on the fp16 store (or keep the
     approximate score when the version has no fp16 objects); MATCHED_FRAMES come from the same prototypes.
Removed ids (incremental publishing) never appear in results. Ties go to the lower gallery row, as in exact mode.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prost.errors import DependencyError, GalleryError
from prost.gallery.ranking import merge_top_k
from prost.gallery.store import SearchParams, Segment, Version, faiss_module
from prost_client import gallery_format as G, protocol as P

SPLIT_ROWS = 32_768  # centroid interaction splits its rows across threads in pieces of at least this many
LOWEST_LIST_WEIGHT = 1e-6  # a probed list's postings weight above the lowest one's: every listed video scores > 0


class Scorer(Protocol):
    """S [T, c] of texts (phrases [T, Np, D], sentences [T, D]) against a block of videos (objects [c, L, No, D],
    events [c, Ne, D], as stored or float32). `reads_in_place`: whether it scores the stored bytes without a copy and
    bounds its own pair-score blocks, so the engine's block bounds only S_es [T, c, Ne] and the float32 events."""

    reads_in_place: bool

    def __call__(self, phrases: np.ndarray, sentence: np.ndarray, objects: np.ndarray,
                 events: np.ndarray) -> np.ndarray: ...


class OnnxScorer:
    """The exported similarity graph on ONNX Runtime, fed the prototypes in the dtype it declares."""

    reads_in_place = False

    def __init__(self, session, beta: float) -> None:
        self.session = session
        self.beta = np.array([beta], np.float32)
        self.dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32
                       for i in session.get_inputs() if i.name in (P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES)}

    @property
    def takes_float32(self) -> bool:
        """Whether the graph takes float32 prototypes (an export's graph), so every block is converted."""
        return np.float32 in self.dtypes.values()

    def __call__(self, phrases: np.ndarray, sentence: np.ndarray, objects: np.ndarray,
                 events: np.ndarray) -> np.ndarray:
        feed = {P.PHRASE_PROTOTYPES: phrases, P.SENTENCE_EMBEDDING: sentence, P.BETA: self.beta,
                P.OBJECT_PROTOTYPES: np.asarray(objects).astype(self.dtypes[P.OBJECT_PROTOTYPES], copy=False),
                P.EVENT_PROTOTYPES: np.asarray(events).astype(self.dtypes[P.EVENT_PROTOTYPES], copy=False)}
        return self.session.run([P.SIMILARITY], feed)[0]


class TorchBf16Scorer:
    """S with the S_op GEMM in bfloat16 on torch (oneDNN), for bf16 object stores: the stored bytes are the GEMM's
    operand, so no block is converted (README: Exact scoring in bf16)."""

    reads_in_place = True

    def __init__(self, beta: float, block_elements: int, threads: int = 0) -> None:
        """`block_elements` bounds the pair scores held at once; `threads` > 0 sets torch's intra-op threads
        (process-wide: each Triton instance is its own process)."""
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        # The store is a read-only memory map that torch only reads: its one-time warning would say otherwise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        self.beta, self.block = beta, block_elements

    def __call__(self, phrases: np.ndarray, sentence: np.ndarray, objects: np.ndarray,
                 events: np.ndarray) -> np.ndarray:
        import torch

        from prost.model.prost import TextPrototypes, VideoPrototypes
        from prost.model.similarity import similarity

        objects = np.asarray(objects)
        if objects.dtype != G.OBJECT_DTYPES["bf16"]:  # its bits are read as bf16: any other dtype would be garbage
            raise TypeError(f"TorchBf16Scorer scores bf16 object stores, got {objects.dtype}")
        stored = torch.from_numpy(objects.view(np.uint16)).view(torch.bfloat16)
        text = TextPrototypes(torch.from_numpy(phrases), torch.from_numpy(sentence))
        video = VideoPrototypes(stored, torch.from_numpy(np.asarray(events)))
        return similarity(text, video, self.beta, self.block, compute="bf16").total.numpy()


def bf16_unavailable() -> str | None:
    """Why torch's bf16 GEMM cannot score here (torch missing, or a CPU without AVX-512 BF16 or AMX), else None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return "this CPU has neither AVX-512 BF16 nor AMX"
    return None


def similarity_session(path: Path, threads: int = 0) -> Any:
    """A CPU ONNX Runtime session of a gallery's similarity graph whose threads sleep between runs: spinning, they
    took a core from centroid interaction's threads and doubled its time at 1M videos. `threads` 0: ORT's default."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyError("onnxruntime is not installed; `pip install prost-serve`") from exc
    if not Path(path).is_file():
        raise GalleryError(f"{path} does not exist: a gallery version holds its similarity graph")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.disable_fallback()
    return session


def make_scorer(objects_dtype: str, session: Any, beta: float, block_elements: int,
                threads: int = 0) -> tuple[Scorer, str]:
    """The scorer for a gallery whose objects are stored in `objects_dtype`, and a line saying which: torch's bf16
    GEMM for a bf16 store where it runs, else the similarity graph on ONNX Runtime (a bf16 store converted per
    block, with the reason)."""
    if objects_dtype != "bf16":
        return OnnxScorer(session, beta), "the similarity graph on ONNX Runtime"
    reason = bf16_unavailable()
    if reason is None:
        return TorchBf16Scorer(beta, block_elements, threads), "bf16 GEMM (torch) on the bf16 store"
    return OnnxScorer(session, beta), f"the similarity graph on ONNX Runtime, bf16 store converted per block ({reason})"


@dataclass
class Results:
    """Best-first gallery rows [T, k], their scores [T, k] and, per phrase, the frame of its best object [T, k, Np]."""

    rows: np.ndarray
    scores: np.ndarray
    frames: np.ndarray


class GalleryEngine:
    """Search over one loaded gallery Version; `search` is the only entry point."""

    def __init__(self, version: Version, scorer: Scorer, beta: float, block_elements: int, threads: int = 0) -> None:
        """`block_elements` bounds the pair scores or prototypes materialised at once (the Triton model's
        BLOCK_ELEMENTS; `prost.model.similarity.DEFAULT_BLOCK_ELEMENTS` elsewhere); `threads` (0: the CPUs this
        process may use) share centroid interaction, whose numpy gathers release the GIL."""
        self.version, self.scorer, self.beta, self.block = version, scorer, beta, block_elements
        self.threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="prost-gallery")
        self.ids = [v for s in version.segments for v in s.ids]
        self.offsets = np.cumsum([0] + [len(s.ids) for s in version.segments])
        self.alive = np.array([v not in s.removed for s in version.segments for v in s.ids], bool)
        self.removed = np.flatnonzero(~self.alive)
        self.size = int(self.alive.sum())
        self.num_objects, self.num_events = version.objects_dims[1], version.events_dims[0]
        self.slots = version.objects_dims[0] * version.objects_dims[1]

    @property
    def mode(self) -> str:
        """exact below the version's `exact_below` videos (or without an index), else two-stage; a version stored
        without fp16 objects can only be searched through its codes."""
        v = self.version
        return "two-stage" if v.indexed and (self.size >= v.params.exact_below or not v.fp16_objects) else "exact"

    def search(self, phrases: np.ndarray, sentence: np.ndarray, k: int, *, params: SearchParams | None = None,
               mode: str | None = None) -> Results:
        """The k best videos (at most the gallery size) for each text; `params` and `mode` override the version's."""
        phrases = np.ascontiguousarray(phrases, np.float32)
        sentence = np.ascontiguousarray(sentence, np.float32)
        k = min(k, self.size)
        mode = mode or self.mode
        if mode == "two-stage" and not self.version.indexed:
            raise ValueError("this gallery version has no index; build it with `prost gallery build`")
        if mode == "exact" and not self.version.fp16_objects:
            raise ValueError("this gallery version stores no fp16 objects, so it can only be searched in two stages")
        if k == 0:
            empty = np.zeros((len(phrases), 0), np.int64)
            return Results(empty, empty.astype(np.float32), np.zeros((len(phrases), 0, phrases.shape[1]), np.int32))
        if mode == "exact":
            rows, scores = self._exact(phrases, sentence, k)
        else:
            rows, scores = self._two_stage(phrases, sentence, k, params or self.version.params)
        return Results(rows, scores, self.matched_frames(phrases, rows))

    # -- exact --------------------------------------------------------------------------------------------------
    def _chunk(self, phrases: np.ndarray, objects: np.ndarray, events: np.ndarray) -> int:
        """Videos per scoring block within BLOCK_ELEMENTS: for a scorer that reads the store in place (and blocks its
        own pair scores), its event scores [T, c, Ne] and its float32 events; else its [T, Np, L, No] pair scores and
        its prototypes."""
        per_event = int(np.prod(events.shape[1:]))
        if self.scorer.reads_in_place:  # S_es's [T, c, Ne] too
            return max(1, self.block // max(len(phrases) * events.shape[1], per_event))
        pairs = int(np.prod(phrases.shape[:2])) * int(np.prod(objects.shape[1:3]))
        return max(1, self.block // max(pairs, int(np.prod(objects.shape[1:])) + per_event))

    def _exact(self, phrases, sentence, k):
        t = len(phrases)
        best_i, best_s = np.zeros((t, 0), np.int64), np.zeros((t, 0), np.float32)
        for segment, offset in zip(self.version.segments, self.offsets):
            objects, events = segment.objects, segment.events
            chunk = self._chunk(phrases, objects, events)
            for v0 in range(0, len(segment.ids), chunk):
                scores = self.scorer(phrases, sentence, objects[v0:v0 + chunk], events[v0:v0 + chunk])
                rows = np.arange(offset + v0, offset + v0 + scores.shape[1])
                keep = self.alive[rows]
                best_i, best_s = merge_top_k(best_i, best_s, np.broadcast_to(rows[keep], (t, int(keep.sum()))),
                                             scores[:, keep], k)
        return best_i, best_s

    # -- two-stage ----------------------------------------------------------------------------------------------
    def _two_stage(self, phrases, sentence, k, params: SearchParams):
        params = replace(params, candidates=max(params.candidates, k))  # each source yields k videos at least
        candidates = self._candidates(phrases, sentence, params)
        out_i = np.zeros((len(phrases), k), np.int64)
        out_s = np.zeros((len(phrases), k), np.float32)
        for t, rows in enumerate(candidates):
            if len(rows) < k:  # the index found too few live videos (heavy removals): score them all
                rows = np.flatnonzero(self.alive)
            approx = self._approximate(phrases[t], sentence[t], rows)
            order = np.lexsort((rows, -approx))[:max(params.rerank, k)]
            rows, approx = rows[order], approx[order]
            if self.version.fp16_objects:  # the final S from the fp16 store
                rows = np.sort(rows)
                scores = self._exact_rows(phrases[t:t + 1], sentence[t:t + 1], rows)
            else:
                scores = approx[None]
            best_i, best_s = merge_top_k(np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32), rows[None],
                                         scores, k)
            out_i[t], out_s[t] = best_i[0], best_s[0]
        return out_i, out_s

    def _candidates(self, phrases, sentence, params: SearchParams) -> list[np.ndarray]:
        """Sorted live gallery rows per text: the union of both candidate sources."""
        if params.candidates >= self.size:  # exhaustive
            return [np.flatnonzero(self.alive)] * len(phrases)
        return [np.union1d(events, self._by_objects(phrases[i], params))
                for i, events in enumerate(self._by_events(sentence, params))]

    def _by_events(self, sentence: np.ndarray, params: SearchParams) -> list[np.ndarray]:
        """Per text, each segment's `candidates` best live videos by S_es: the events index proposes `events_refine`
        times as many live event vectors as that takes (fast-scan codes, scanned exhaustively), their videos re-scored
        exactly from the stored events. An older version's IVF index is searched over `nprobe` lists, every live video
        it finds kept, as before."""
        found_rows: list[list[np.ndarray]] = [[] for _ in range(len(sentence))]
        n_e, faiss = self.num_events, faiss_module()
        for segment, offset in zip(self.version.segments, self.offsets):
            if not len(segment.ids):
                continue
            ivf = faiss.try_extract_index_ivf(segment.events_index) is not None
            search = faiss.SearchParametersIVF(nprobe=params.nprobe) if ivf else None
            want = params.candidates * (1 if ivf else params.events_refine) * n_e
            for i, videos in enumerate(self._live_proposals(segment, offset, sentence, want, search)):
                if not ivf and len(videos) > params.candidates:
                    s_es = self._s_es(segment.events, videos, sentence[i])
                    videos = np.sort(videos[np.argpartition(-s_es, params.candidates - 1)[:params.candidates]])
                found_rows[i].append(videos + offset)
        return [np.concatenate(rows) if rows else np.zeros(0, np.int64) for rows in found_rows]

    def _live_proposals(self, segment: Segment, offset: int, sentence: np.ndarray, want: int,
                        search: Any) -> list[np.ndarray]:
        """Per text, the sorted videos (segment rows) of its `want` best event vectors of live videos, as if removed
        videos were not in the index: it is asked for want / (live fraction) first, and twice as many while a text
        got fewer live ones (and the index has more to give)."""
        n_e, n = self.num_events, len(segment.ids)
        live = self.alive[offset:offset + n]
        k = min(n * n_e, -(-want * n // max(1, int(live.sum()))))
        while True:
            _, found = segment.events_index.search(sentence, k, params=search)
            events = [f[f >= 0] for f in found]
            kept = [e[live[e // n_e]][:want] for e in events]
            if k == n * n_e or all(len(e) == want or len(f) < k for e, f in zip(kept, events)):
                return [np.unique(e // n_e) for e in kept]
            k = min(n * n_e, 2 * k)

    def _s_es(self, events: np.ndarray, rows: np.ndarray, sentence: np.ndarray) -> np.ndarray:
        """S_es [m] of a segment's ascending rows from its stored events, read in blocks of BLOCK_ELEMENTS."""
        chunk = max(1, self.block // int(np.prod(events.shape[1:])))
        return np.concatenate([(np.asarray(events[rows[i:i + chunk]], np.float32) @ sentence).max(-1)
                               for i in range(0, len(rows), chunk)])

    def _by_objects(self, phrases: np.ndarray, params: SearchParams) -> np.ndarray:
        """PLAID's candidate generation for S_op: the videos listed under each phrase's `nprobe` nearest coarse
        centroids, pruned by their postings (`_prune`) to as many as `interaction` centroid lookups cover (`candidates`
        at least), ranked by centroid interaction (S_op with each object replaced by its centroid); the best
        `candidates` rows."""
        codec = self.version.codec
        table = phrases @ codec.centroids.T  # [Np, lists]
        best = table.max(0)  # each centroid's best phrase
        probe = min(params.nprobe, len(best))
        lists = (np.unique(np.argpartition(-table, probe - 1, axis=1)[:, :probe]) if probe < len(best)
                 else np.arange(len(best)))
        score = self._postings_score(lists, best[lists] - best[lists].min() + LOWEST_LIST_WEIGHT)
        rows = np.flatnonzero(score)  # listed and live
        keep = max(params.candidates, params.interaction // self.slots)
        if len(rows) > keep:
            rows = self._prune(score, rows, keep)
        if len(rows) > params.candidates:
            s_op = self._centroid_interaction(best, rows)
            rows = np.sort(rows[np.argpartition(-s_op, params.candidates - 1)[:params.candidates]])
        return rows

    def _postings_score(self, lists: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Per gallery row, the sum of the `weights` of the probed `lists` that hold it (float32; 0 for removed rows
        and rows no probed list holds): one scatter-add per list and segment, so a single pass over the postings gives
        both the listed videos and their pruning score, without a weight per posting."""
        score, weights = np.zeros(len(self.alive), np.float32), weights.astype(np.float32)
        for segment, offset in zip(self.version.segments, self.offsets):
            if not len(segment.ids):
                continue
            held = score[offset:offset + len(segment.ids)]
            for c, weight in zip(lists, weights):
                np.add.at(held, segment.rows[segment.offsets[c]:segment.offsets[c + 1]], weight)
        score[self.removed] = 0
        return score

    def _prune(self, score: np.ndarray, rows: np.ndarray, keep: int) -> np.ndarray:
        """The `keep` (< len(rows)) of the listed live `rows` with the largest postings `score`, ascending: after
        PLAID's centroid pruning, from the postings alone, so centroid interaction scores a bounded number of videos
        however many the probed lists hold."""
        return np.sort(rows[np.argpartition(-score[rows], keep - 1)[:keep]])

    def _centroid_interaction(self, best: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """S_op [m] of ascending gallery rows with each object replaced by its coarse centroid (`best`: each centroid's
        best phrase score), over the slot-major coarse ids (Segment.coarse), in pieces across the engine's threads."""
        seg = np.searchsorted(self.offsets, rows, side="right") - 1
        pieces = []
        for s in np.unique(seg):
            local = rows[seg == s] - self.offsets[s]
            split = max(1, min(self.threads, len(local) // SPLIT_ROWS))
            pieces += [(self.version.segments[s].coarse, part) for part in np.array_split(local, split)]
        return np.concatenate(list(self._pool.map(lambda piece: self._max_mean(best, *piece), pieces)))

    def _max_mean(self, best: np.ndarray, coarse: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Mean over object slots of the max over frames of best[coarse id], one frame's [No, m] slab at a time."""
        n_o = self.num_objects
        frames = best[coarse[:n_o][:, local]]
        for first in range(n_o, self.slots, n_o):
            np.maximum(frames, best[coarse[first:first + n_o][:, local]], out=frames)
        return frames.mean(0)

    def _take(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Rows (ascending) of one per-segment array ("events", "objects", "codes"), in that order."""
        if not len(rows):
            return np.asarray(getattr(self.version.segments[0], name)[:0])
        parts = []
        seg = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(seg):
            local = rows[seg == s] - self.offsets[s]
            parts.append(np.asarray(getattr(self.version.segments[s], name)[local]))
        return np.concatenate(parts)

    def decoded_objects(self, rows: np.ndarray) -> np.ndarray:
        """Object prototypes [m, slots, D] of gallery rows, decoded from their codes (float32)."""
        return self.version.codec.decode(self._take(rows, "codes"))

    def _approximate(self, phrases, sentence, rows):
        """S_es from the stored events + beta * S_op from decoded object codes, for candidate rows [m]."""
        s_es = (self._take(rows, "events").astype(np.float32) @ sentence).max(-1)
        objects = self.decoded_objects(rows)
        best = (phrases @ objects.reshape(-1, objects.shape[-1]).T).max(0)  # [m * L * No]: each object's best phrase
        by_frame = best.reshape(len(rows), -1, self.num_objects).transpose(1, 0, 2)  # [L, m, No]: max over long rows
        s_op = np.maximum.reduce(by_frame, axis=0).mean(-1)
        return s_es + self.beta * s_op

    def _exact_rows(self, phrases, sentence, rows):
        """S [T, m] of the given ascending rows through the similarity graph, in blocks."""
        objects, events = self._take(rows, "objects"), self._take(rows, "events")
        chunk = self._chunk(phrases, objects, events)
        return np.concatenate([self.scorer(phrases, sentence, objects[i:i + chunk], events[i:i + chunk])
                               for i in range(0, len(rows), chunk)], axis=1)

    def matched_frames(self, phrases: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each result row and phrase prototype, the frame of its best-matching object prototype [T, k, Np]."""
        t, k = rows.shape
        frames = np.zeros((t, k, phrases.shape[1]), np.int32)
        for i in range(t):
            if k == 0:
                continue
            order = np.argsort(rows[i], kind="stable")
            objects = self._prototypes(rows[i][order])  # [k, L * No, D]
            sims = objects @ phrases[i].T  # [k, L * No, Np]
            frames[i, order] = (sims.argmax(1) // self.num_objects).astype(np.int32)
        return frames

    def _prototypes(self, rows: np.ndarray) -> np.ndarray:
        if self.version.fp16_objects:
            objects = self._take(rows, "objects").astype(np.float32)
            return objects.reshape(len(rows), -1, objects.shape[-1])
        return self.decoded_objects(rows)


def with_overrides(params: SearchParams, **overrides: int | None) -> SearchParams:
    """`params` with the given fields replaced (None keeps the version's value)."""
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})
