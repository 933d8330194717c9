"""Parity gates: exported graphs against PyTorch, per prototype (max abs error, cosine) and by retrieval ranking."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prost.config import ProstConfig
from prost.data.datasets import load_split
from prost.data.video import decode_video
from prost.errors import DependencyError, ParityError
from prost.metrics import RECALL_KS, text_to_video
from prost.model.prost import ProstModel
from prost.tokenizer import tokenize
from prost_client import protocol as P
from prost_export.graphs import EncoderGraph, SimilarityGraph, example_inputs
from prost_export.specs import GraphSpec, graph_specs

log = logging.getLogger(__name__)

ATOL = 1e-4  # fp32 gate: max abs error per tensor
MIN_COSINE = 0.9999  # fp32 gate: cosine per prototype vector
TOP_K = 10


@dataclass(frozen=True)
class TensorParity:
    """Agreement of one output tensor."""

    name: str
    max_abs: float
    min_cosine: float


@dataclass
class ParityReport:
    """Per-tensor agreement; `worst` is the tensor furthest from its bound."""

    rows: list[TensorParity] = field(default_factory=list)
    ranking_queries: int = 0

    def summary(self) -> str:
        parts = [f"{r.name}: max|d|={r.max_abs:.2e} min cos={r.min_cosine:.6f}" for r in self.rows]
        if self.ranking_queries:
            parts.append(f"top-{TOP_K} rankings identical for {self.ranking_queries} queries")
        return "; ".join(parts)


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], atol: float | None = ATOL,
            min_cosine: float = MIN_COSINE, report: ParityReport | None = None) -> ParityReport:
    """Compare tensors by name; raise ParityError naming the worst tensor if any bound fails (atol None = cosine only)."""
    report = report or ParityReport()
    failures = []
    for name, ref in expected.items():
        got = np.asarray(actual[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise ParityError(f"{name}: shape {got.shape} differs from the reference {ref.shape}")
        max_abs = float(np.abs(got - ref).max()) if ref.size else 0.0
        row = TensorParity(name, max_abs, _min_cosine(ref, got))
        report.rows.append(row)
        if (atol is not None and max_abs > atol) or row.min_cosine < min_cosine:
            failures.append(row)
    if failures:
        worst = max(failures, key=lambda r: (r.max_abs / atol if atol else 0.0) + (1 - r.min_cosine) / (1 - min_cosine))
        raise ParityError(
            f"parity gate failed for {len(failures)} tensor(s); worst {worst.name}: max abs error {worst.max_abs:.3e} "
            f"(bound {atol}), min cosine {worst.min_cosine:.6f} (bound {min_cosine})"
        )
    return report


def _min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Smallest cosine over prototype vectors (last axis); similarity matrices count as vectors per row."""
    num = (ref * got).sum(-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return float(cos.min()) if cos.size else 1.0


def onnx_session(path: Path, providers: list[str] | None = None):
    """An ONNX Runtime session with explicit providers (CPU by default) and no silent fallback."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyError("onnxruntime is not installed; `pip install prost-serve`") from exc
    providers = providers or ["CPUExecutionProvider"]
    missing = set(providers) - set(ort.get_available_providers())
    if missing:
        raise DependencyError(f"ONNX Runtime lacks {', '.join(sorted(missing))}; for GPUs install `prost-serve[gpu]`")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def run_torch(model: ProstModel, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch reference for one graph on numpy inputs, keyed by the graph's output names."""
    spec = graph_specs(model.config)[graph]
    module = {"video_prototypes": lambda: EncoderGraph(model, "video"),
              "text_prototypes": lambda: EncoderGraph(model, "text"), "similarity": SimilarityGraph}[graph]().eval()
    with torch.no_grad():
        outs = module(*(torch.from_numpy(inputs[t.name]) for t in spec.inputs))
    return {t.name: o.numpy() for t, o in zip(spec.outputs, outs)}


def run_onnx(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def check_random_parity(model: ProstModel, export_dir: Path, batch: int = 2, seed: int = 1234) -> ParityReport:
    """Each graph on fresh random inputs (a seed the export did not trace with), ORT vs PyTorch."""
    report = ParityReport()
    for name, spec in graph_specs(model.config).items():
        inputs = example_inputs(spec, batch=batch, seed=seed, videos=batch + 1)
        compare(run_torch(model, name, inputs), run_onnx(onnx_session(export_dir / spec.onnx_file), inputs),
                report=report)
    return report


# A backend runs one exported graph by name on numpy feeds: PyTorch, ONNX Runtime or a TensorRT engine.
Backend = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def torch_backend(model: ProstModel) -> Backend:
    return lambda graph, feeds: run_torch(model, graph, feeds)


def onnx_backend(export_dir: Path, config: ProstConfig,
                 graph_file: Callable[[GraphSpec], str] = lambda spec: spec.onnx_file) -> Backend:
    """ONNX Runtime (CPU) over an export's graphs; `graph_file` names the file of each (a reduced-precision one)."""
    specs = graph_specs(config)
    sessions = {name: onnx_session(export_dir / graph_file(spec)) for name, spec in specs.items()}
    return lambda graph, feeds: run_onnx(sessions[graph], feeds)


def dataset_inputs(config: ProstConfig, data_dir: Path, split: str = "test",
                   max_videos: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames [V, L, 3, S, S] of a split's first `max_videos` videos and token ids [V, W] of their first
    captions, as training decodes and tokenizes them."""
    items = load_split(data_dir, split)[:max_videos]
    frames = np.stack([decode_video(i.path, config.head.num_frames, config.vision.image_size, i.start, i.end,
                                    sample_fps=config.sample_fps).frames for i in items])
    return frames, tokenize([i.captions[0] for i in items], config.max_words)


def dataset_scores(config: ProstConfig, backend: Backend, frames: np.ndarray, ids: np.ndarray,
                   batch: int = 8) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Prototypes of videos and captions, and their similarity [T, V], all through one backend, which never sees more
    than `batch` videos or texts in one call (a TensorRT profile's max)."""
    specs = graph_specs(config)
    outputs: dict[str, list[np.ndarray]] = {}
    for graph, array in (("video_prototypes", frames), ("text_prototypes", ids)):
        name = specs[graph].inputs[0].name
        for start in range(0, len(array), batch):
            for out_name, value in backend(graph, {name: array[start : start + batch]}).items():
                outputs.setdefault(out_name, []).append(value)
    prototypes = {name: np.concatenate(parts) for name, parts in outputs.items()}
    beta = np.array([config.beta], dtype=np.float32)
    text_names = [t.name for t in specs["text_prototypes"].outputs]
    video_names = [t.name for t in specs["video_prototypes"].outputs]

    def block(t: int, v: int) -> np.ndarray:
        feeds = {**{n: prototypes[n][t : t + batch] for n in text_names},
                 **{n: prototypes[n][v : v + batch] for n in video_names}, P.BETA: beta}
        return backend("similarity", feeds)[P.SIMILARITY]

    return prototypes, np.block([[block(t, v) for v in range(0, len(frames), batch)]
                                 for t in range(0, len(ids), batch)])


def check_dataset_parity(model: ProstModel, export_dir: Path, data_dir: Path, split: str = "test",
                         max_videos: int = 200) -> ParityReport:
    """Decoded videos and captions of a dataset: ONNX prototypes within the fp32 gate, identical top-10 rankings."""
    config = model.config
    frames, ids = dataset_inputs(config, data_dir, split, max_videos)
    ref_protos, ref = dataset_scores(config, torch_backend(model), frames, ids)
    got_protos, got = dataset_scores(config, onnx_backend(export_dir, config), frames, ids)
    report = compare(ref_protos, got_protos)
    _check_rankings(ref, got)
    report.ranking_queries = len(ref)
    return report


def check_backend_retrieval(export_dir: Path, config: ProstConfig, data_dir: Path, backend: Backend,
                            tolerance_points: float, batch: int, split: str = "test", max_videos: int = 500) -> dict:
    """A backend, fed at most `batch` items a call, against ONNX Runtime on a dataset: identical top-10 rankings when
    `tolerance_points` is 0, else text-to-video R@1/5/10 within that many points. Returns both metric sets."""
    frames, ids = dataset_inputs(config, data_dir, split, max_videos)
    _, ref = dataset_scores(config, onnx_backend(export_dir, config), frames, ids)
    _, got = dataset_scores(config, backend, frames, ids, batch)
    truth = np.arange(len(ref))
    metrics = {"onnxruntime": text_to_video(ref, truth), "candidate": text_to_video(got, truth)}
    if tolerance_points == 0:
        _check_rankings(ref, got)
    for k in RECALL_KS:
        delta = abs(metrics["candidate"][f"R@{k}"] - metrics["onnxruntime"][f"R@{k}"])
        if delta > tolerance_points:
            raise ParityError(f"R@{k} moved by {delta:.2f} points against ONNX Runtime (bound {tolerance_points})")
    return metrics


def _check_rankings(ref: np.ndarray, got: np.ndarray) -> None:
    k = min(TOP_K, ref.shape[1])
    order = lambda s: np.argsort(-s, axis=1, kind="stable")[:, :k]  # noqa: E731
    differ = np.nonzero((order(ref) != order(got)).any(axis=1))[0]
    if len(differ):
        raise ParityError(f"top-{k} rankings differ for {len(differ)} of {len(ref)} queries (first: query {differ[0]})")
