"""Random state dicts in the official GitHub and ModelScope layouts, written from the reference's key list.

The keys and shapes are spelled out here independently of the model code (prost-model.md section 1.8), so a naming
drift in the model fails the checkpoint tests.
"""

from __future__ import annotations

import torch

# A narrow CLIP with the official depth (12 + 12 blocks, so blocks 10-11 are the shifted ones) keeps files small.
SIZES = dict(d=64, vw=64, tw=64, patch=32, tokens=50, frames=12, objects=12, phrases=28, events=3, vocab=49408)


def _attn(prefix: str, w: int) -> dict[str, tuple]:
    return {f"{prefix}.in_proj_weight": (3 * w, w), f"{prefix}.in_proj_bias": (3 * w,),
            f"{prefix}.out_proj.weight": (w, w), f"{prefix}.out_proj.bias": (w,)}


def _block(prefix: str, w: int, attn: str = "attn") -> dict[str, tuple]:
    return {**_attn(f"{prefix}.{attn}", w), f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,)}


def clip_shapes(s: dict = SIZES) -> dict[str, tuple]:
    d, vw, tw = s["d"], s["vw"], s["tw"]
    shapes = {"clip.positional_embedding": (77, tw), "clip.text_projection": (tw, d), "clip.logit_scale": (),
              "clip.token_embedding.weight": (s["vocab"], tw), "clip.ln_final.weight": (tw,), "clip.ln_final.bias": (tw,),
              "clip.visual.class_embedding": (vw,), "clip.visual.positional_embedding": (s["tokens"], vw),
              "clip.visual.conv1.weight": (vw, 3, s["patch"], s["patch"]), "clip.visual.ln_pre.weight": (vw,),
              "clip.visual.ln_pre.bias": (vw,), "clip.visual.ln_post.weight": (vw,), "clip.visual.ln_post.bias": (vw,),
              "clip.visual.proj": (vw, d)}
    for i in range(12):
        shapes.update(_block(f"clip.transformer.resblocks.{i}", tw))
        shapes.update(_block(f"clip.visual.transformer.resblocks.{i}", vw, "attn.net" if i >= 10 else "attn"))
    return shapes


def head_shapes(s: dict = SIZES, official: bool = True) -> dict[str, tuple]:
    d = s["d"]
    shapes = {"patch_prototype_weight.0.weight": (d, d), "patch_prototype_weight.0.bias": (d,),
              "patch_prototype_weight.2.weight": (s["objects"] - 1, d), "patch_prototype_weight.2.bias": (s["objects"] - 1,),
              "word_prototype_weight.0.weight": (d, d), "word_prototype_weight.0.bias": (d,),
              "word_prototype_weight.2.weight": (s["phrases"], d), "word_prototype_weight.2.bias": (s["phrases"],),
              "frame_decoder.V": (s["frames"], d), "event_decoder.V": (s["events"], d),
              "frame_position_embeddings.weight": (77, d)}
    if official:
        shapes.update({"frame_prototype_weight.0.weight": (d, d), "frame_prototype_weight.0.bias": (d,),
                       "frame_prototype_weight.2.weight": (s["frames"], d), "frame_prototype_weight.2.bias": (s["frames"],)})
    for stack, norms, attns in (("frame_decoder", 4, ("multihead_attn", "self_attn", "self_attn_vis")),
                                ("event_decoder", 5, ("multihead_attn", "self_attn", "self_attn_vis"))):
        for layer in range(2):
            prefix = f"{stack}.event_decoder.layers.{layer}"
            for attn in attns:
                shapes.update(_attn(f"{prefix}.{attn}", d))
            for lin in ("linear1", "linear2"):
                shapes.update({f"{prefix}.{lin}.weight": (d, d), f"{prefix}.{lin}.bias": (d,)})
            for n in range(1, norms + 1):
                shapes.update({f"{prefix}.norm{n}.weight": (d,), f"{prefix}.norm{n}.bias": (d,)})
        shapes.update({f"{stack}.event_decoder.norm.weight": (d,), f"{stack}.event_decoder.norm.bias": (d,)})
    for i in range(4):
        shapes.update(_block(f"transformerClip.resblocks.{i}", s["tw"]))
    return shapes


def _fp16_in_official(key: str) -> bool:
    """The official code converts CLIP's Linear/Conv/attention weights and both projections to half."""
    if not key.startswith("clip."):
        return False
    return key.endswith(("_proj_weight", "_proj_bias", "proj.weight", "proj.bias", "c_fc.weight", "c_fc.bias",
                         "c_proj.weight", "c_proj.bias", "conv1.weight", "visual.proj", "text_projection"))


def official_state_dict(seed: int = 0, s: dict = SIZES) -> dict[str, torch.Tensor]:
    """Every key of the official GitHub checkpoint, CLIP tensors in fp16 as the official code saves them."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in {**clip_shapes(s), **head_shapes(s)}.items():
        value = torch.randn(shape, generator=gen) * 0.02
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")) or (
            ".norm" in key and key.endswith("weight")
        ):
            value = value + 1.0
        state[key] = value.half() if _fp16_in_official(key) else value
    state["clip.logit_scale"] = torch.tensor(4.6052)
    return state


def modelscope_state_dict(seed: int = 0, s: dict = SIZES) -> dict[str, torch.Tensor]:
    """The port: fp32 CLIP, no frame_prototype_weight, plus its dead cross-encoder similarity head."""
    state = {k: v.float() for k, v in official_state_dict(seed, s).items() if not k.startswith("frame_prototype_weight")}
    state["similarity_dense.weight"] = torch.zeros(1, s["d"])
    state["similarity_dense.bias"] = torch.zeros(1)
    return state
