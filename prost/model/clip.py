"""CLIP towers as ProST uses them: ViT with a temporal token shift in its last blocks, causal text transformer.

Module and parameter names follow OpenAI CLIP and the official ProST checkpoint (`clip.*` keys), including the
`attn.net.*` wrapper of the shifted blocks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from prost.config import TextConfig, VisionConfig
from prost.model.attention import MASK_VALUE, MultiheadAttention


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TokenShift(nn.Module):
    """TS2-Net temporal shift of the attention input: chosen tokens take frame t-1's or t+1's values.

    Tokens {1, 1+fold, ...} come from the previous frame and {4, 4+fold, ...} from the next one (fold = T // n_div);
    CLS never moves, and the first/last frame keep their own tokens where the source lies outside the clip.
    Implemented with concat + where (no in-place indexed assignment) so that it exports to ONNX.
    """

    def __init__(self, width: int, heads: int, tokens: int, frames: int, n_div: int) -> None:
        super().__init__()
        self.net = MultiheadAttention(width, heads)  # key `attn.net.*`, as in the official checkpoint
        self.frames = frames
        prev_idx, next_idx = shift_indices(tokens, n_div)
        take_prev = torch.zeros(tokens, 1, dtype=torch.bool)
        take_next = torch.zeros(tokens, 1, dtype=torch.bool)
        take_prev[prev_idx] = True
        take_next[next_idx] = True
        self.register_buffer("take_prev", take_prev, persistent=False)  # [T, 1]
        self.register_buffer("take_next", take_next, persistent=False)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention only (query is key is value): the shifted input feeds Q, K and V."""
        y = self.shift(query)
        return self.net(y, y, y, mask)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """x [B*L, T, C] (video-major, frames in order) -> shifted copy."""
        video = x.reshape(-1, self.frames, x.shape[1], x.shape[2])  # [B, L, T, C]
        from_prev = torch.cat([video[:, :1], video[:, :-1]], dim=1)
        from_next = torch.cat([video[:, 1:], video[:, -1:]], dim=1)
        shifted = torch.where(self.take_prev, from_prev, torch.where(self.take_next, from_next, video))
        return shifted.flatten(0, 1)


def shift_indices(tokens: int, n_div: int) -> tuple[list[int], list[int]]:
    """Token indices taken from the previous and from the next frame (official TS2-Net rule)."""
    fold = tokens // n_div
    if fold < 1:
        raise ValueError(f"shift_div {n_div} is larger than the token count {tokens}")
    return list(range(1, tokens, fold)), list(range(4, tokens, fold))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, attn: nn.Module | None = None) -> None:
        super().__init__()
        self.attn = attn if attn is not None else MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks; `resblocks` as in CLIP."""

    def __init__(self, blocks: list[ResidualBlock]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP ViT returning every token after ln_post and proj: H [B*L, T, D]."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, frames: int, shift_div: int, shift_blocks: int) -> None:
        super().__init__()
        width, tokens = cfg.width, cfg.tokens
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        blocks = []
        for i in range(cfg.layers):
            shifted = i >= cfg.layers - shift_blocks
            attn = TokenShift(width, cfg.heads, tokens, frames, shift_div) if shifted else None
            blocks.append(ResidualBlock(width, cfg.heads, attn))
        self.transformer = Transformer(blocks)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B*L, 3, S, S] -> tokens [B*L, T, D]."""
        x = self.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # [N, T-1, C]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj


class CLIP(nn.Module):
    """OpenAI CLIP with the text tower inline (attribute names match the `clip.` checkpoint prefix)."""

    def __init__(self, vision: VisionConfig, text: TextConfig, embed_dim: int, frames: int, max_words: int,
                 shift_div: int, shift_blocks: int) -> None:
        super().__init__()
        self.visual = VisionTransformer(vision, embed_dim, frames, shift_div, shift_blocks)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = Transformer([ResidualBlock(text.width, text.heads) for _ in range(text.layers)])
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # ln(100), CLIP's trained value
        causal = torch.full((max_words, max_words), MASK_VALUE).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)  # [W, W] additive
        self.max_words = max_words
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text.width**-0.5)

    def encode_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [B, W] -> G [B, W, D]: every position after ln_final and text_projection."""
        x = self.token_embedding(token_ids.long())
        x = x + self.positional_embedding[: self.max_words]
        x = self.transformer(x, self.causal_mask)
        return self.ln_final(x) @ self.text_projection
