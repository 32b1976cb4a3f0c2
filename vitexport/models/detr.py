"""DETR (Carion et al., arXiv 2005.12872): a ResNet, a post-norm transformer encoder-decoder and set prediction heads,
with the official facebookresearch/detr parameter names but two: `backbone.` stands for the release's
`backbone.0.body.`, and attention keeps Q, K and V projections apart (`q_proj`, `k_proj`, `v_proj`, as Hugging Face)
where the release fuses them into nn.MultiheadAttention's `in_proj_weight`. Queries and keys get position embeddings
and values do not, so the fused matrix would be sliced in the forward pass: exported, that is a Split of a weight
the exporter does not fold, and INT8 quantizers and attention fusions need each projection's weight as an
initializer of its MatMul. `vitexport.weights.detr` splits the release's matrices.

Export-friendly: the input is a fixed S x S canvas and a pixel mask (1 = image, 0 = padding), so every shape but the
batch is static and padding is data, not control flow. The mask reaches the transformer twice, as DETR's does: in
the sine position embedding (positions count valid pixels only) and as a key padding mask in the encoder's
self-attention and the decoder's cross-attention, applied as a finite additive bias so that a fully padded image
gives uniform attention instead of NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.models.resnet import ResNet, ResNetConfig
from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.detr import checkpoint_filter

# Added to the attention scores of padding keys. exp(-1e4) is exactly 0 in fp32 for any real score, as -inf would
# give, yet a row with every key masked (a blank canvas) stays finite instead of NaN, and the constant stays finite in
# FP16 (float32's finfo.min, Hugging Face's eager mask, becomes -inf there).
MASK_BIAS = -1e4


@dataclass(frozen=True)
class DETRConfig:
    backbone: ResNetConfig = field(default_factory=lambda: ResNetConfig("bottleneck", (3, 4, 6, 3), num_classes=0))
    d_model: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 2048
    num_queries: int = 100
    num_classes: int = 91  # COCO's category ids 1..90 and 0 (80 used); the logits add "no object"

    def feature_side(self, img_size: int) -> int:
        return list(self.backbone.convs(img_size))[-1][3]

    def num_params(self, img_size: int = 800) -> int:
        # Frozen BatchNorm keeps its affine as buffers (as DETR's does): only the convolutions' weights are parameters.
        D, F_, Q, C = self.d_model, self.ffn_dim, self.num_queries, self.num_classes + 1
        backbone = sum(ci * co * k * k for ci, co, k, _ in self.backbone.convs(img_size))
        attention = 4 * D * D + 4 * D  # q, k, v and out projections
        ffn = 2 * D * F_ + F_ + D
        encoder = self.enc_layers * (attention + ffn + 2 * 2 * D)
        decoder = self.dec_layers * (2 * attention + ffn + 3 * 2 * D) + 2 * D  # with its final norm
        heads = (D * C + C) + 2 * (D * D + D) + (D * 4 + 4)  # class_embed, bbox_embed
        input_proj = self.backbone.num_features * D + D
        return backbone + input_proj + Q * D + encoder + decoder + heads

    def macs(self, img_size: int) -> int:
        D, F_, Q, C = self.d_model, self.ffn_dim, self.num_queries, self.num_classes + 1
        L = self.feature_side(img_size) ** 2  # encoder tokens
        encoder = 4 * L * D * D + 2 * L * L * D + 2 * L * D * F_  # q, k, v, out; QKᵀ and AV; FFN
        self_attn = 4 * Q * D * D + 2 * Q * Q * D
        cross_attn = 2 * Q * D * D + 2 * L * D * D + 2 * Q * L * D  # q and out; k and v of the memory; QKᵀ, AV
        decoder = self_attn + cross_attn + 2 * Q * D * F_
        heads = Q * D * C + Q * (2 * D * D + D * 4)
        input_proj = L * self.backbone.num_features * D
        return (
            self.backbone.conv_macs(img_size)
            + input_proj
            + self.enc_layers * encoder
            + self.dec_layers * decoder
            + heads
        )


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine, all buffers (DETR's and torchvision's FrozenBatchNorm2d), eps 1e-5.

    Computed as inference-mode batch norm, which is DETR's x * scale + shift (within 1e-5 of it on DETR's outputs):
    one op, which the exporter's optimizer folds into the convolution before it. DETR's own six elementwise ops per
    layer gave ResNet-50 some 500 more nodes to trace, and the export took twice as long."""

    # Buffers, declared for the type checker (register_buffer sets them where it cannot see).
    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


def sine_position_embedding(mask: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's PositionEmbeddingSine(normalize=True, scale=2π): (B, h, w) bool, True = image -> (B, h·w, 2·num_feats).

    Positions are cumulative counts of valid cells, normalised by the valid extent of each row and column, so a
    padded image gets the embedding its unpadded self would have."""
    valid = mask.float()
    y = valid.cumsum(1)  # (B, h, w)
    x = valid.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)  # (F,)
    pos_x = x[:, :, :, None] / dim_t  # (B, h, w, F)
    pos_y = y[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)  # (B, h, w, 2F) -> (B, h·w, 2F)


class Attention(nn.Module):
    """Multi-head attention whose query, key and value come in separately: DETR adds position embeddings to queries
    and keys, never to values. `bias` (B, 1, Tq, Tk) is added to the scores: 0 for image keys, MASK_BIAS for padding.
    `sdpa` or `explicit` as `vitexport.models.layers.Attention`.
    """

    def __init__(self, dim: int, num_heads: int, attention: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention = attention
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, Tq, D = query.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, T, D) -> (B, H, T, hd)

        q = heads(self.q_proj(query))  # (B, H, Tq, hd)
        k = heads(self.k_proj(key))  # (B, H, Tk, hd)
        v = heads(self.v_proj(value))
        if self.attention == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
            if bias is not None:
                attn = attn + bias
            x = attn.softmax(dim=-1) @ v  # (B, H, Tq, hd)
        return self.out_proj(x.transpose(1, 2).reshape(B, Tq, D))


class EncoderLayer(nn.Module):
    """Post-norm: self-attention (position on queries and keys), then the ReLU FFN, each followed by its norm."""

    def __init__(self, cfg: DETRConfig, attention: str):
        super().__init__()
        D = cfg.d_model
        self.self_attn = Attention(D, cfg.num_heads, attention)
        self.linear1 = nn.Linear(D, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, D)
        self.norm1 = nn.LayerNorm(D)
        self.norm2 = nn.LayerNorm(D)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        qk = src + pos  # (B, L, D)
        src = self.norm1(src + self.self_attn(qk, qk, src, bias))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention among the queries, cross-attention to the image, the FFN."""

    def __init__(self, cfg: DETRConfig, attention: str):
        super().__init__()
        D = cfg.d_model
        self.self_attn = Attention(D, cfg.num_heads, attention)
        self.multihead_attn = Attention(D, cfg.num_heads, attention)
        self.linear1 = nn.Linear(D, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, D)
        self.norm1 = nn.LayerNorm(D)
        self.norm2 = nn.LayerNorm(D)
        self.norm3 = nn.LayerNorm(D)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_key: torch.Tensor,
        query_pos: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        qk = tgt + query_pos  # (B, Q, D)
        tgt = self.norm1(tgt + self.self_attn(qk, qk, tgt))
        tgt = self.norm2(tgt + self.multihead_attn(tgt + query_pos, memory_key, memory, bias))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Encoder(nn.Module):
    def __init__(self, cfg: DETRConfig, attention: str):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg, attention) for _ in range(cfg.enc_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos, bias)
        return src


class Decoder(nn.Module):
    def __init__(self, cfg: DETRConfig, attention: str):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, attention) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        memory_key = memory + pos  # the cross-attention's keys, the same in every layer
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key, query_pos, bias)
        return self.norm(tgt)


class Transformer(nn.Module):
    def __init__(self, cfg: DETRConfig, attention: str):
        super().__init__()
        self.encoder = Encoder(cfg, attention)
        self.decoder = Decoder(cfg, attention)


class MLP(nn.Module):
    """The box head: Linear-ReLU layers, the last without ReLU."""

    def __init__(self, dim: int, hidden: int, out: int, num_layers: int):
        super().__init__()
        widths = [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip([dim, *widths], [*widths, out], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    def __init__(self, cfg: DETRConfig, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.backbone = ResNet(cfg.backbone, norm_layer=FrozenBatchNorm2d)
        self.input_proj = nn.Conv2d(cfg.backbone.num_features, D, 1)
        self.query_embed = nn.Embedding(cfg.num_queries, D)
        self.transformer = Transformer(cfg, attention)
        self.class_embed = nn.Linear(D, cfg.num_classes + 1)
        self.bbox_embed = MLP(D, D, 4, 3)

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images on their canvas and (B, S, S) masks, 1 = image, 0 = padding (None: no padding) ->
        logits (B, Q, num_classes + 1), the last "no object", and boxes (B, Q, 4): (cx, cy, w, h) in [0, 1],
        relative to the image, not the canvas."""
        B = pixel_values.shape[0]
        if pixel_mask is None:
            pixel_mask = torch.ones_like(pixel_values[:, 0])
        features = self.backbone.forward_features(pixel_values)  # (B, 3, S, S) -> (B, C, h, w), h = w = S/32
        # Nearest downsampling, as DETR: a feature cell is an image cell when its top-left pixel is.
        mask = F.interpolate(pixel_mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]  # (B, h, w)
        pos = sine_position_embedding(mask, self.cfg.d_model // 2)  # (B, L, D), L = h·w
        bias = torch.where(mask.flatten(1), 0.0, MASK_BIAS)[:, None, None, :]  # (B, 1, 1, L)
        # Spelled out per query row: ONNX Runtime's Attention op (opset 23) does not broadcast its mask over queries.
        L, Q = bias.shape[-1], self.cfg.num_queries
        src = self.input_proj(features).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, D)
        memory = self.transformer.encoder(src, pos, bias.expand(-1, -1, L, -1))  # (B, L, D)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)  # (Q, D) -> (B, Q, D)
        tgt = torch.zeros_like(query_pos)
        hs = self.transformer.decoder(tgt, memory, pos, query_pos, bias.expand(-1, -1, Q, -1))  # (B, Q, D)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()  # (B, Q, C + 1), (B, Q, 4)


def build_detr(cfg: DETRConfig, *, img_size: int, attention: str = "sdpa") -> DETR:
    # The position embedding is computed from the mask, so any canvas size works without resampling anything.
    return DETR(cfg, attention)


# DETR's evaluation resize (shorter side 800, longer at most 1333, bilinear, ImageNet mean/std) onto an 800 x 800
# canvas by default; --img-size sets the canvas.
PREPROCESS = PreprocessConfig(800, crop_pct=1.0, interpolation="bilinear", shortest_edge=800, longest_edge=1333)

# name, ResNet blocks per stage
VARIANTS = [
    ("detr_resnet50", (3, 4, 6, 3)),
    ("detr_resnet101", (3, 4, 23, 3)),
]

for name, layers in VARIANTS:
    register(
        ModelSpec(
            name=name,
            family="detr",
            arch=DETRConfig(backbone=ResNetConfig("bottleneck", layers, num_classes=0)),
            preprocess=PREPROCESS,
            builder=build_detr,
            checkpoint_filter=checkpoint_filter,
            task="detection",
        )
    )

# A tiny config for fast tests: a 96 x 96 canvas gives a 3 x 3 feature map, so padding masks whole cells.
register(
    ModelSpec(
        name="test_detr",
        family="detr",
        arch=DETRConfig(
            backbone=ResNetConfig("bottleneck", (1, 1, 1, 1), width=8, num_classes=0),
            d_model=32,
            num_heads=2,
            enc_layers=1,
            dec_layers=1,
            ffn_dim=64,
            num_queries=10,
            num_classes=4,
        ),
        preprocess=PreprocessConfig(96, crop_pct=1.0, interpolation="bilinear", shortest_edge=96, longest_edge=160),
        builder=build_detr,
        checkpoint_filter=checkpoint_filter,
        task="detection",
        for_tests=True,
    )
)
