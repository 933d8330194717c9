"""GraphSpec: names, dtypes and shapes of each exported graph, shared by ONNX export, TensorRT and Triton configs."""

from __future__ import annotations

from dataclasses import dataclass

from prost.config import ProstConfig
from prost_client import protocol as p

BATCH = "batch"  # symbolic name of the dynamic batch dimension
TEXTS, VIDEOS = "texts", "videos"  # the similarity graph's two dynamic dimensions


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; `shape` holds ints and symbolic (dynamic) dimension names."""

    name: str
    dtype: str  # numpy dtype name: "float32" or "int32"
    shape: tuple[int | str, ...]
    normalised: bool = False  # L2-normalised along the last axis (prototypes)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class GraphSpec:
    """An exported graph: file stem, inputs and outputs in order."""

    name: str  # "video_prototypes", "text_prototypes", "similarity"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"


def graph_specs(config: ProstConfig) -> dict[str, GraphSpec]:
    """The three graphs of a ProST export for this configuration, keyed by name."""
    h, d, s = config.head, config.embed_dim, config.vision.image_size
    objects = (h.num_frames, h.num_objects, d)
    video = GraphSpec(
        "video_prototypes",
        (TensorSpec(p.FRAMES, "float32", (BATCH, h.num_frames, 3, s, s)),),
        (TensorSpec(p.OBJECT_PROTOTYPES, "float32", (BATCH, *objects), True),
         TensorSpec(p.EVENT_PROTOTYPES, "float32", (BATCH, h.num_events, d), True)),
    )
    text = GraphSpec(
        "text_prototypes",
        (TensorSpec(p.TOKEN_IDS, "int32", (BATCH, config.max_words)),),
        (TensorSpec(p.PHRASE_PROTOTYPES, "float32", (BATCH, h.num_phrases, d), True),
         TensorSpec(p.SENTENCE_EMBEDDING, "float32", (BATCH, d), True)),
    )
    similarity = GraphSpec(
        "similarity",
        (TensorSpec(p.PHRASE_PROTOTYPES, "float32", (TEXTS, h.num_phrases, d), True),
         TensorSpec(p.SENTENCE_EMBEDDING, "float32", (TEXTS, d), True),
         TensorSpec(p.OBJECT_PROTOTYPES, "float32", (VIDEOS, *objects), True),
         TensorSpec(p.EVENT_PROTOTYPES, "float32", (VIDEOS, h.num_events, d), True),
         TensorSpec(p.BETA, "float32", (1,))),
        tuple(TensorSpec(n, "float32", (TEXTS, VIDEOS)) for n in (p.SIMILARITY, p.S_ES, p.S_OP)),
    )
    return {g.name: g for g in (video, text, similarity)}


def arch_tag(compute_capability: str) -> str:
    """`sm90` for compute capability "9.0": the suffix that keeps plans and timing caches of several GPUs apart."""
    return f"sm{compute_capability.replace('.', '')}"
