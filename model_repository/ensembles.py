"""Config building blocks of the Triton repository (tensor entries, ModelSpec) and its four ensembles.

prost_text_search   TEXT (+ optional TOP_K) -> tokenizer -> text encoder -> gallery: VIDEO_IDS, SCORES, MATCHED_FRAMES
prost_encode_text   TEXT -> tokenizer -> text encoder: PHRASE_PROTOTYPES, SENTENCE_EMBEDDING
prost_encode_video  VIDEO -> decoder -> video encoder: OBJECT_PROTOTYPES, EVENT_PROTOTYPES
prost_score         TEXT [T], VIDEO [V] (+ BETA) -> both encoders -> prost_similarity: SIMILARITY [T, V]
ProstClient scores with the two encode ensembles and prost_similarity, so each text and video is encoded once
however the pairs are chunked; prost_score serves clients that want one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from prost_client import protocol as P
from prost_export.specs import GraphSpec, TensorSpec

DTYPES = {"float32": mc.TYPE_FP32, "int32": mc.TYPE_INT32, "string": mc.TYPE_STRING}


@dataclass
class ModelSpec:
    """One model directory: its config, the files of a version directory (bytes or source paths), and configs kept
    beside config.pbtxt for a start script to choose from (build on target)."""

    config: mc.ModelConfig
    files: dict[str, Path | bytes] = field(default_factory=dict)
    alternatives: dict[str, mc.ModelConfig] = field(default_factory=dict)


def tensor(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> tuple:
    """(name, data type, dims, optional) of a config input or output."""
    return name, DTYPES[dtype], [int(d) for d in dims], optional


def spec_tensor(spec: TensorSpec, batched: bool, *, optional: bool = False) -> tuple:
    """A graph tensor as a config entry: without the batch dimension when batched, dynamic dims as -1."""
    shape = spec.shape[1:] if batched else spec.shape
    return tensor(spec.name, spec.dtype, [-1 if isinstance(d, str) else int(d) for d in shape], optional=optional)


def search_results(specs: dict[str, GraphSpec]) -> list[tuple]:
    """VIDEO_IDS [K], SCORES [K], MATCHED_FRAMES [K, Np]: the outputs of prost_gallery and prost_text_search."""
    phrases = specs["text_prototypes"].outputs[0]  # [B, Np, D]
    return [tensor(P.VIDEO_IDS, "string", [-1]), tensor(P.SCORES, "float32", [-1]),
            tensor(P.MATCHED_FRAMES, "int32", [-1, phrases.shape[1]])]


def model_config(name: str, max_batch_size: int, inputs: list[tuple], outputs: list[tuple],
                 params: dict | None = None) -> mc.ModelConfig:
    """A ModelConfig with its inputs, outputs and string `parameters`."""
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    for tensor_name, dtype, dims, optional in inputs:
        config.input.add(name=tensor_name, data_type=dtype, dims=dims, optional=optional)
    for tensor_name, dtype, dims, _ in outputs:
        config.output.add(name=tensor_name, data_type=dtype, dims=dims)
    for key, value in (params or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def ensembles(specs: dict[str, GraphSpec], max_batch_size: int, max_video_batch_size: int, beta: str,
              optional_beta: bool) -> dict[str, ModelSpec]:
    """The ensembles, keyed by name; `beta` is the BETA_PARAM value, `optional_beta` when prost_similarity defaults
    BETA itself (cpu variant)."""
    mbs, vbs = max_batch_size, max_video_batch_size
    text_steps = [(P.TOKENIZER_MODEL, {P.TEXT: P.TEXT}, {P.TOKEN_IDS: "token_ids"}),
                  (P.TEXT_MODEL, {P.TOKEN_IDS: "token_ids"},
                   {P.PHRASE_PROTOTYPES: P.PHRASE_PROTOTYPES, P.SENTENCE_EMBEDDING: P.SENTENCE_EMBEDDING})]
    video_steps = [(P.VIDEO_DECODE_MODEL, {P.VIDEO: P.VIDEO}, {P.FRAMES: "frames"}),
                   (P.VIDEO_MODEL, {P.FRAMES: "frames"},
                    {P.OBJECT_PROTOTYPES: P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES: P.EVENT_PROTOTYPES})]
    text_outputs = [spec_tensor(t, batched=True) for t in specs["text_prototypes"].outputs]
    video_outputs = [spec_tensor(t, batched=True) for t in specs["video_prototypes"].outputs]
    results = search_results(specs)
    search = _ensemble(P.TEXT_SEARCH_MODEL, mbs,
                       [tensor(P.TEXT, "string", [1]), tensor(P.TOP_K, "int32", [1], optional=True)], results,
                       text_steps + [(P.GALLERY_MODEL, {P.PHRASE_PROTOTYPES: P.PHRASE_PROTOTYPES,
                                                        P.SENTENCE_EMBEDDING: P.SENTENCE_EMBEDDING, P.TOP_K: P.TOP_K},
                                      {name: name for name, *_ in results})])
    encode_text = _ensemble(P.ENCODE_TEXT_MODEL, mbs, [tensor(P.TEXT, "string", [1])], text_outputs, text_steps)
    encode_video = _ensemble(P.ENCODE_VIDEO_MODEL, vbs, [tensor(P.VIDEO, "string", [1])], video_outputs, video_steps)
    # prost_score pairs T texts with V videos, so it cannot batch (T != V): max_batch_size 0, explicit [-1, 1]
    # inputs; its batched composing models see the leading -1 as their batch dimension.
    prototypes = (P.PHRASE_PROTOTYPES, P.SENTENCE_EMBEDDING, P.OBJECT_PROTOTYPES, P.EVENT_PROTOTYPES, P.BETA)
    score = _ensemble(P.SCORE_MODEL, 0,
                      [tensor(P.TEXT, "string", [-1, 1]), tensor(P.VIDEO, "string", [-1, 1]),
                       tensor(P.BETA, "float32", [1], optional=optional_beta)],
                      [tensor(P.SIMILARITY, "float32", [-1, -1])],
                      text_steps + video_steps + [(P.SIMILARITY_MODEL, {n: n for n in prototypes},
                                                   {P.SIMILARITY: P.SIMILARITY})])
    score.config.parameters[P.BETA_PARAM].string_value = beta  # the value clients send
    return {m.config.name: m for m in (search, encode_text, encode_video, score)}


def _ensemble(name: str, mbs: int, inputs, outputs, steps) -> ModelSpec:
    config = model_config(name, mbs, inputs, outputs)
    config.platform = "ensemble"
    for model, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return ModelSpec(config, {})
