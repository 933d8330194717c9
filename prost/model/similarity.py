"""ProST similarity as pure functions shared by training, evaluation and export.

Inputs are L2-normalised prototypes, as the encoders return them; scores are cosines.
S_es(t, v) = max_k <s_t, e_vk>;  S_op(t, v) = mean_j max_{f, i} <p_ti, o_vfj>;  S = S_es + beta * S_op.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

# Largest [t, Np, v, L, No] pair-score block `similarity` materialises at once (elements, fp32: 4 MiB): small enough
# to stay near the caches, large enough for an efficient GEMM (bench/similarity.py measured 1M-4M best on 2 cores).
DEFAULT_BLOCK_ELEMENTS = 1 << 20
# Phrase rows per block (texts x Np): every video block streamed from memory is reused by this many rows of the GEMM.
PHRASE_ROWS = 1024
# Fewest phrase rows (texts x Np) whose fp32 GEMM goes to numpy's BLAS: a shorter one does not repay switching between
# torch's and OpenBLAS's thread pools (bench/search.py in-process, one query at a time: p50 15 -> 19 ms without it).
BLAS_MIN_ROWS = 256
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

class Similarity(NamedTuple):
    """Text-by-video score matrices [T, V]."""

    total: torch.Tensor
    s_es: torch.Tensor
    s_op: torch.Tensor


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, 1e-12) along the last axis (a zero vector stays zero)."""
    return F.normalize(x, dim=-1, eps=1e-12)


def event_sentence(sentence: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """ESPM: sentence [T, D], events [V, Ne, D] -> [T, V], the best event per video."""
    return torch.einsum("td,vkd->tvk", sentence, events).amax(dim=-1)


def object_phrase(phrases: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """OPPM: phrases [T, Np, D], objects [V, L, No, D] -> [T, V].

    Each object slot takes its best phrase over all frames, then slots are averaged (divisor No) in float32 whatever
    the GEMM's dtype, so a bf16 GEMM rounds each cosine once and not their mean.
    """
    t, n_p, d = phrases.shape
    v, n_l, n_o, _ = objects.shape
    if t * n_p >= BLAS_MIN_ROWS and _on_numpy(phrases, objects):
        sims = np.matmul(phrases.detach().numpy().reshape(t * n_p, d), objects.detach().numpy().reshape(-1, d).T)
        best = torch.from_numpy(sims.reshape(t, n_p, v, n_l, n_o).max(axis=1).max(axis=2))  # [T, V, No]
    else:
        sims = phrases.reshape(t * n_p, d) @ objects.reshape(v * n_l * n_o, d).transpose(0, 1)
        best = sims.reshape(t, n_p, v, n_l, n_o).amax(dim=1).amax(dim=2)
    return best.float().mean(dim=-1)


def _on_numpy(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a float32 CPU product runs eagerly outside autograd, so numpy's BLAS (OpenBLAS) can take it: torch's is
    MKL, which runs its AVX-512 kernels only on Intel CPUs (OpenBLAS reached 2x its rate on AMD, bench/limits.py).
    The block's maxes run in numpy too: switching thread pools between them cost 3x."""
    on_cpu = a.dtype == b.dtype == torch.float32 and a.device.type == b.device.type == "cpu"
    traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
    eager = on_cpu and not traced and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    return eager and torch.get_num_threads() >= _numpy_blas_threads()  # fewer: the caller limited torch's threads


@functools.cache
def _numpy_blas_threads() -> int:
    """Threads of numpy's BLAS pool, which torch.set_num_threads does not limit (so a caller that lowered torch's
    threads keeps the torch path and its limit)."""
    from threadpoolctl import threadpool_info

    pools = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i["filepath"]]
    return max(pools, default=1)


def combine(s_es: torch.Tensor, s_op: torch.Tensor, beta: float | torch.Tensor) -> Similarity:
    """S = S_es + beta * S_op."""
    return Similarity(s_es + beta * s_op, s_es, s_op)


def similarity(text, video, beta: float = 1.0, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
               compute: str = "fp32") -> Similarity:
    """Score TextPrototypes against VideoPrototypes in blocks, never holding more than `block_elements` pair scores.

    Blocks take up to PHRASE_ROWS phrase rows (many texts) against as many videos as fit, so each video block is read
    from memory once per text tile rather than once per text.

    Args:
        text: TextPrototypes (phrases [T, Np, D], sentence [T, D]).
        video: VideoPrototypes (objects [V, L, No, D], events [V, Ne, D]).
        beta: weight of S_op.
        block_elements: bound on the size of the intermediate [t, Np, v, L, No] block.
        compute: "fp32", or "bf16" for the S_op GEMM in bfloat16 (about twice the fp32 rate on CPUs with AVX-512
            BF16 or AMX; scores move by about 1e-3, so near-ties may swap); results are float32 either way.
    """
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"compute must be one of {', '.join(COMPUTE_DTYPES)}, got {compute!r}")
    dtype = COMPUTE_DTYPES[compute]
    phrases, objects = text.phrases.to(dtype), video.objects  # the gallery is converted block by block
    n_t, n_p = phrases.shape[:2]
    n_v = objects.shape[0]
    per_pair = n_p * objects.shape[1] * objects.shape[2]
    text_chunk = max(1, min(n_t, PHRASE_ROWS // n_p, block_elements // per_pair))
    video_chunk = max(1, min(n_v, block_elements // (per_pair * text_chunk)))
    s_op = text.phrases.new_empty(n_t, n_v, dtype=torch.float32)
    for t0 in range(0, n_t, text_chunk):
        for v0 in range(0, n_v, video_chunk):
            s_op[t0 : t0 + text_chunk, v0 : v0 + video_chunk] = object_phrase(
                phrases[t0 : t0 + text_chunk], objects[v0 : v0 + video_chunk].to(dtype)
            )
    return combine(event_sentence(text.sentence.float(), video.events.float()), s_op, beta)
