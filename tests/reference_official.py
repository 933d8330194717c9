"""An independent transcription of the official ProST forward pass, for golden tests only.

Transcribed from github.com/IMCCretrieval/ProST (commit b936856, `ProST/modules/{decoder,until_module,module_clip,
modeling}.py`; `modules/modeling.py` at c60cfb3 "init" is identical in the parts used here) and checked against
/work/shared/reference/prost-model.md. It deliberately shares NOTHING with `prost.model`: official-style
sequence-first `torch.nn.MultiheadAttention`, the LND layout of OpenAI CLIP, boolean masks from a loop transcription
of `adaptive_mask`, the patch shift as in-place indexed assignment, and the official module/attribute names, so that
a state dict in the official key layout loads into `OfficialProST` strictly.

Departures from the official code, none of which changes the eval-mode result:
* the ProST head width `set_dim` is hard-coded 512 upstream; here it is the checkpoint's embed dim;
* the frame-decoder mask is moved to the memory's device instead of `.cuda()`;
* the official model runs CLIP in fp16; here everything is fp32 (the state dict is cast on load);
* the official test-mode reload is broken (it mutates the state dict while iterating); here the shift wrapper is
  applied before a strict `load_state_dict`, as the ModelScope port does;
* video input is [B, L, 3, H, W] instead of the loader's [B, 1, L, 1, 3, H, W] (the official code views both to
  [B*L, 3, H, W] in the same frame order).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

EOT_ID = 49407  # <|endoftext|>, the highest id of the CLIP vocabulary


# --------------------------------------------------------------------------------------------------------------
# OpenAI CLIP as vendored by ProST (modules/module_clip.py)
# --------------------------------------------------------------------------------------------------------------
class LayerNorm(nn.LayerNorm):
    """CLIP's fp16-safe LayerNorm: normalise in fp32, return the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return super().forward(x.type(torch.float32)).type(dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block on LND tensors; `attn_mask` may be a tensor or a callable of the sequence length."""

    def __init__(self, d_model: int, n_head: int, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.attn_mask
        if mask is not None and callable(mask):
            mask = mask(x.size(0))  # x is LND: size(0) is the sequence length
        if mask is not None:
            mask = mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x_tuple: tuple):
        x, video_frame = x_tuple
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return (x, video_frame)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask=None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor, video_frame: int = -1) -> torch.Tensor:
        return self.resblocks((x, video_frame))[0]


class VisualTransformer(nn.Module):
    """ViT returning ALL tokens before ln_post (ProST moved ln_post/proj into encode_image_tokens)."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor, video_frame: int = -1) -> torch.Tensor:
        x = self.conv1(x)  # [N, width, grid, grid]  (linear_patch '2d')
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x, video_frame=video_frame)
        return x.permute(1, 0, 2)  # LND -> NLD


class CLIP(nn.Module):
    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.context_length = context_length
        self.visual = VisualTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       attn_mask=self.build_attention_mask)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def build_attention_mask(self, context_length: int) -> torch.Tensor:
        """Additive causal mask, -inf strictly above the diagonal, built lazily for the actual length."""
        mask = torch.zeros(context_length, context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image_tokens(self, image: torch.Tensor, return_hidden: bool = False):
        """ln_post on ALL tokens, then proj; the CLS feature is token 0 of the projected sequence."""
        hidden = self.visual(image.type(self.dtype))
        hidden = self.visual.ln_post(hidden) @ self.visual.proj
        x = hidden[:, 0, :]
        if return_hidden:
            return x, hidden
        return x

    def encode_text(self, text: torch.Tensor, return_hidden: bool = False):
        x = self.token_embedding(text).type(self.dtype)  # [B, W, width]
        x = x + self.positional_embedding[: x.size(1), :].type(self.dtype)  # only the first W rows
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        hidden = self.ln_final(x).type(self.dtype) @ self.text_projection  # every position projected
        x = hidden[torch.arange(hidden.shape[0]), text.argmax(dim=-1)]
        if return_hidden:
            return x, hidden
        return x


# --------------------------------------------------------------------------------------------------------------
# TS2-Net patch shift (modules/until_module.py: PatchShiftModule, make_patch_shift)
# --------------------------------------------------------------------------------------------------------------
class PatchShiftModule(nn.Module):
    def __init__(self, net: nn.Module, video_frame: int, n_div: int):
        super().__init__()
        self.net = net
        self.video_frame = video_frame
        self.n_div = n_div

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None):
        x = query.permute(1, 0, 2)  # q == k == v; LND -> NLD
        patch_len = x.shape[-2]
        fold = patch_len // self.n_div
        x = x.reshape(-1, self.video_frame, x.shape[-2], x.shape[-1])  # [bs, frame, T, width]
        psm = torch.zeros_like(x)
        psm[:, :, :, :] = x[:, :, :, :]
        lshift_indices = torch.arange(start=1, end=patch_len, step=fold)
        psm[:, 1:, lshift_indices, :] = x[:, :-1, lshift_indices, :]  # token takes frame t-1
        rshift_indices = torch.arange(start=1 + 3, end=patch_len, step=fold)
        psm[:, :-1, rshift_indices, :] = x[:, 1:, rshift_indices, :]  # token takes frame t+1
        x = psm.reshape(-1, patch_len, x.shape[-1]).permute(1, 0, 2)  # NLD -> LND
        return self.net(x, x, x, need_weights=need_weights, attn_mask=attn_mask)


def make_patch_shift(net: nn.Module, video_frame: int = 12, n_div: int = 7) -> None:
    """Wrap the attention of visual blocks 10 and 11 (hard-coded upstream) in PatchShiftModule."""
    blocks = list(net.clip.visual.transformer.resblocks.children())
    for i, block in enumerate(blocks):
        if 10 <= i <= 11:
            block.attn = PatchShiftModule(block.attn, video_frame=video_frame, n_div=n_div)
    net.clip.visual.transformer.resblocks = nn.Sequential(*blocks)


# --------------------------------------------------------------------------------------------------------------
# Temporal decoders (modules/decoder.py)
# --------------------------------------------------------------------------------------------------------------
def _get_clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def adaptive_mask(aa: int, bb: int, ada_para: float = 0.5) -> torch.Tensor:
    """[aa, bb] bool, True = blocked. The call site passes ada_para=0.2."""
    tensor = torch.zeros((aa, bb))
    adaptive_num = int(bb * ada_para)
    cc = int(bb / aa)
    for i in range(aa):
        start_col = i * cc
        end_col = start_col + cc + adaptive_num
        if end_col > bb - 1:
            tmp = end_col - (bb - 1)
            start_col = start_col - tmp
            if start_col < 0:
                start_col = 0
            end_col = bb
        tensor[i, start_col:end_col] = 1
    return ~tensor.bool()


class Event_Layer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.self_attn_vis = nn.MultiheadAttention(d_model, nhead, dropout=dropout)  # never called
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.norm5 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)  # never called
        self.activation = nn.ReLU(inplace=True)

    def forward(self, tgt, memory, pos=None, query_pos=None):
        tgt = self.norm1(tgt)
        memory = self.norm2(memory)
        tgt = self.self_attn(tgt, tgt, tgt)[0]  # NO residual: self-attention replaces the queries
        tgt = self.norm3(tgt)
        tgt2, atten_weights = self.multihead_attn(tgt, memory, memory)
        tgt = tgt + self.dropout1(tgt2)
        tgt = self.norm4(tgt)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        tgt = tgt + self.dropout2(tgt2)
        tgt = self.norm5(tgt)
        return tgt, atten_weights


class Frame_Layer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, para: float = 1.0,
                 dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)  # never called
        self.self_attn_vis = nn.MultiheadAttention(d_model, nhead, dropout=dropout)  # never called
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU(inplace=True)
        self.mask_para = para  # unused upstream

    def forward(self, tgt, memory, pos=None, query_pos=None):
        tgt = self.norm1(tgt)
        memory = self.norm2(memory)
        mask_new = adaptive_mask(tgt.shape[0], memory.shape[0], ada_para=0.2)  # sequence-first: [L, L*No]
        tgt2, atten_weights = self.multihead_attn(tgt, memory, memory, attn_mask=mask_new.to(memory.device))
        tgt = tgt + self.dropout1(tgt2)
        tgt = self.norm3(tgt)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        tgt = tgt + self.dropout2(tgt2)
        tgt = self.norm4(tgt)
        return tgt, atten_weights


class TransDecoder(nn.Module):
    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm=None, return_intermediate: bool = False):
        super().__init__()
        self.layers = _get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(self, tgt, memory, pos=None, query_pos=None):
        output = tgt
        intermediate, all_weights = [], []
        for layer in self.layers:
            output, weights = layer(output, memory, pos=pos, query_pos=query_pos)  # every layer reads raw memory
            if self.return_intermediate:
                intermediate.append(self.norm(output))
                all_weights.append(weights)
        if self.norm is not None:
            output = self.norm(output)
            if self.return_intermediate:
                intermediate.pop()
                intermediate.append(output)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(all_weights)
        return output.unsqueeze(0)


class _QueryDecoder(nn.Module):
    """The shared body of Event_decoder / Frame_decoder (upstream they are two copies of the same code)."""

    layer_cls: type = None

    def __init__(self, num_attris: int = 3, layers: int = 1, heads: int = 1, dim_ftr: int = 512,
                 pos_emb: bool = False, length: int = 1, dim_feedforward: int = 512, without_init: bool = False):
        super().__init__()
        self.V = nn.Parameter(torch.Tensor(num_attris, dim_feedforward), requires_grad=True)
        nn.init.xavier_uniform_(self.V)
        decoder_layer = self.layer_cls(d_model=dim_ftr, nhead=heads, dim_feedforward=dim_feedforward)
        self.event_decoder = TransDecoder(decoder_layer, layers, nn.LayerNorm(dim_ftr), return_intermediate=True)
        self.use_pos_enc = pos_emb
        assert not pos_emb  # positionalencoding2d is not even defined upstream

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch_size = features.shape[0]
        enco_others = features.permute(1, 0, 2)  # [S, B, D]
        h_attr = self.V
        h_attr_batch = h_attr.unsqueeze(0).repeat(batch_size, 1, 1).permute(1, 0, 2)  # [Q, B, D]
        hs, _ = self.event_decoder(h_attr_batch, enco_others)
        return hs[-1].permute(1, 0, 2)  # [B, Q, D]


class Event_decoder(_QueryDecoder):
    layer_cls = Event_Layer


class Frame_decoder(_QueryDecoder):
    layer_cls = Frame_Layer


# --------------------------------------------------------------------------------------------------------------
# The ProST model (modules/modeling.py: CLIP4Clip, eval-mode paths)
# --------------------------------------------------------------------------------------------------------------
def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


class OfficialProST(nn.Module):
    """CLIP4Clip as configured for ProST (loose_type, sim_header seqTransf), sizes read from a state dict."""

    def __init__(self, state: dict[str, torch.Tensor], n_div: int = 7, cross_num_hidden_layers: int = 4):
        super().__init__()
        conv1 = state["clip.visual.conv1.weight"]
        vision_width, vision_patch_size = conv1.shape[0], conv1.shape[-1]
        vision_layers = _count(state, "clip.visual.transformer.resblocks.")
        grid_size = round((state["clip.visual.positional_embedding"].shape[0] - 1) ** 0.5)
        embed_dim = state["clip.text_projection"].shape[1]
        transformer_width = state["clip.ln_final.weight"].shape[0]
        self.clip = CLIP(embed_dim, vision_patch_size * grid_size, vision_layers, vision_width, vision_patch_size,
                         state["clip.positional_embedding"].shape[0], state["clip.token_embedding.weight"].shape[0],
                         transformer_width, transformer_width // 64,
                         _count(state, "clip.transformer.resblocks."))

        # dead parameters of `--sim_header seqTransf`, kept so that the official key layout loads strictly
        self.frame_position_embeddings = nn.Embedding(state["clip.positional_embedding"].shape[0], embed_dim)
        self.transformerClip = Transformer(transformer_width, cross_num_hidden_layers, transformer_width // 64)

        self.set_dim = embed_dim  # 512 hard-coded upstream
        self.frame_num = state["frame_decoder.V"].shape[0]  # max_frames
        self.patch_num = state["patch_prototype_weight.2.weight"].shape[0] + 1  # max_patch
        self.word_pro_num = state["word_prototype_weight.2.weight"].shape[0]  # max_word_pro
        self.event_num = state["event_decoder.V"].shape[0]  # max_vfea
        event_layer_num = _count(state, "event_decoder.event_decoder.layers.")

        self.patch_prototype_weight = nn.Sequential(
            nn.Linear(self.set_dim, self.set_dim), nn.ReLU(inplace=True),
            nn.Linear(self.set_dim, self.patch_num - 1), nn.ReLU(inplace=True))
        self.word_prototype_weight = nn.Sequential(
            nn.Linear(self.set_dim, self.set_dim), nn.ReLU(inplace=True),
            nn.Linear(self.set_dim, self.word_pro_num), nn.ReLU(inplace=True))
        self.frame_prototype_weight = nn.Sequential(  # dead
            nn.Linear(self.set_dim, self.set_dim), nn.ReLU(inplace=True),
            nn.Linear(self.set_dim, self.frame_num), nn.ReLU(inplace=True))
        self.frame_decoder = Frame_decoder(num_attris=self.frame_num, layers=event_layer_num, heads=1,
                                           dim_ftr=self.set_dim, dim_feedforward=self.set_dim)
        self.event_decoder = Event_decoder(num_attris=self.event_num, layers=event_layer_num, heads=1,
                                           dim_ftr=self.set_dim, dim_feedforward=self.set_dim)

        make_patch_shift(self, video_frame=self.frame_num, n_div=n_div)
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        self.float().eval()

    # -- text ----------------------------------------------------------------------------------------------------
    def get_sequence_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """-> text_word_proto [B, Np, D] (unnormalised), cls_text_feat [B, D] (the EOT feature)."""
        bs_pair = input_ids.size(0)
        sequence_hidden = self.clip.encode_text(input_ids, return_hidden=True)[1].float()
        text_feat = sequence_hidden.view(bs_pair, -1, sequence_hidden.size(-1))  # [B, W, D], pads included
        word_weights = self.word_prototype_weight(text_feat)  # [B, W, Np]
        text_word_proto = torch.einsum("bmd,bmn->bnd", text_feat, word_weights)
        cls_text_feat = text_feat.contiguous()
        cls_text_feat = cls_text_feat[torch.arange(cls_text_feat.shape[0]), torch.sum(attention_mask, dim=-1) - 1, :]
        return text_word_proto, cls_text_feat

    # -- video ---------------------------------------------------------------------------------------------------
    def get_visual_output(self, video: torch.Tensor):
        """video [B, L, 3, H, W] -> video_patch_proto O [B, L, No, D], video_frame_proto E [B, Ne, D] (unnormalised)."""
        bs_pair = video.shape[0]
        video = torch.as_tensor(video).float().reshape(-1, *video.shape[-3:])  # [B*L, 3, H, W], video-major
        cls_video_feat, video_patch_feat = self.clip.encode_image_tokens(video, return_hidden=True)
        cls_video_feat = cls_video_feat.float()
        video_patch_feat = video_patch_feat.float()
        patch_dim = video_patch_feat.shape[2]

        patch_weights = self.patch_prototype_weight(video_patch_feat)  # [B*L, T, No-1], CLS token included
        video_patch_proto = torch.einsum("bmd,bmn->bnd", video_patch_feat, patch_weights)
        video_patch_proto = torch.cat((cls_video_feat.unsqueeze(1), video_patch_proto), 1)  # CLS again as slot 0
        video_patch_proto = video_patch_proto.reshape(bs_pair, self.frame_num, self.patch_num, patch_dim)

        video_frame_proto = video_patch_proto.reshape(bs_pair, self.patch_num * self.frame_num, patch_dim)
        video_frame_proto = self.frame_decoder(video_frame_proto)
        video_frame_proto = 0.5 * video_frame_proto + 0.5 * cls_video_feat.reshape(bs_pair, self.frame_num, patch_dim)
        video_frame_proto = self.event_decoder(video_frame_proto)
        mean_cls = cls_video_feat.reshape(bs_pair, self.frame_num, patch_dim).mean(1)
        n_events = video_frame_proto.shape[1]
        video_frame_proto = 0.5 * video_frame_proto + 0.5 * mean_cls.unsqueeze(1).repeat(1, n_events, 1)
        return video_patch_proto, video_frame_proto

    # -- similarity (eval mode: no all-gather, no logit scale) ---------------------------------------------------
    def get_max_similarity_logits(self, word_feat, text_feat, patch_feat, video_feat):
        return get_max_similarity_logits(word_feat, text_feat, patch_feat, video_feat, self.patch_num)


def get_max_similarity_logits(word_feat, text_feat, patch_feat, video_feat, patch_num: int):
    """ESPM and OPPM of modeling.py in eval mode, naive [a, b, f, i, j] einsum; returns (S_es, S_es^T, S_op, S_op^T)."""
    text_feat = F.normalize(text_feat, p=2, dim=1)  # [a, D]
    video_feat = F.normalize(video_feat, p=2, dim=2)  # [b, Ne, D]
    retrieve_logits = torch.einsum("ad,bkd->abk", [text_feat, video_feat]).max(2)[0]

    word_feat = F.normalize(word_feat, p=2, dim=2)  # [a, Np, D]
    patch_feat = F.normalize(patch_feat, p=2, dim=3)  # [b, L, No, D]
    retrieve_logits_2 = torch.einsum("aid,bfjd->abfij", [word_feat, patch_feat])
    retrieve_logits_2 = retrieve_logits_2.max(3)[0]  # best phrase  -> [a, b, f, j]
    retrieve_logits_2 = retrieve_logits_2.max(2)[0]  # best frame   -> [a, b, j]
    retrieve_logits_2 = retrieve_logits_2.sum(2) / patch_num  # mean over object slots
    return retrieve_logits, retrieve_logits.t(), retrieve_logits_2, retrieve_logits_2.t()


def official_text_inputs(padded_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as the official loader builds them from [SOT] + words + [EOT] zero-padded to W.

    The loader sets mask = [1] * len(SOT..EOT) + [0] * padding; from padded ids that length is the EOT position + 1.
    """
    ids = torch.as_tensor(padded_ids).long()
    masks = []
    for row in ids.tolist():
        length = row.index(EOT_ID) + 1
        masks.append([1] * length + [0] * (len(row) - length))
    return ids, torch.tensor(masks, dtype=torch.long)
