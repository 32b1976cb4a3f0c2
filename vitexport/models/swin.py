"""Swin Transformer (Liu et al., arXiv 2103.14030), with timm 1.0's parameter names.

Export-friendly: every spatial size is fixed by the input size at build time, so window partition, the cyclic
shift (torch.roll) and its attention mask are static; only the batch axis is dynamic (the one -1 in each
reshape). Patch merging sits at the *start* of stages 2-4 (`layers.N.downsample`), as in timm 1.0; the official
releases and Hugging Face keep it at the end of the previous stage, which `vitexport.weights.swin` remaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.models.layers import Mlp  # exact (erf) GELU, as the Swin checkpoints
from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.swin import checkpoint_filter

# The official implementation masks cross-region pairs of a shifted window with -100, not -inf: kept for parity.
MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinConfig:
    patch_size: int = 4
    window_size: int = 7
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    mlp_ratio: float = 4.0
    num_classes: int = 1000

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def depth(self) -> int:
        """Attention blocks in all stages (what ViTConfig.depth counts; the TensorRT audit expects as many)."""
        return sum(self.depths)

    def stages(self, img_size: int) -> list[tuple[int, int, int, int]]:
        """(dim, resolution, window, shift) of each stage. Like timm, a stage whose feature map is no larger than
        the window attends over the whole map (window clamped to it) and does not shift."""
        res = img_size // self.patch_size
        out = []
        for i in range(len(self.depths)):
            if i > 0:
                res = (res + 1) // 2  # patch merging pads odd sizes
            window = min(self.window_size, res)
            shift = 0 if res <= self.window_size else self.window_size // 2
            out.append((self.embed_dim * 2**i, res, window, shift))
        return out

    def num_params(self, img_size: int) -> int:
        # The relative position tables follow the (clamped) window, so the count depends on the input size.
        D, p = self.embed_dim, self.patch_size
        total = 3 * p * p * D + D + 2 * D  # patch_embed.proj + patch_embed.norm
        prev = D
        for i, (C, _, w, _) in enumerate(self.stages(img_size)):
            if i > 0:
                total += 2 * 4 * prev + 4 * prev * C  # downsample: norm, reduction (no bias)
            Hd = int(C * self.mlp_ratio)
            block = 4 * C + (2 * w - 1) ** 2 * self.num_heads[i]  # norms, relative_position_bias_table
            block += (3 * C * C + 3 * C) + (C * C + C) + (C * Hd + Hd) + (Hd * C + C)  # qkv, proj, mlp
            total += self.depths[i] * block
            prev = C
        return total + 2 * prev + prev * self.num_classes + self.num_classes  # norm, head.fc

    def macs(self, img_size: int) -> int:
        D, p = self.embed_dim, self.patch_size
        grid = img_size // p
        total = grid * grid * D * 3 * p * p  # patch_embed.proj
        prev = D
        for i, (C, res, w, _) in enumerate(self.stages(img_size)):
            if i > 0:
                total += res * res * 4 * prev * C  # downsample.reduction
            padded = -(-res // w) * w  # windows cover the map padded to a multiple of the window
            N, Np, Hd = res * res, padded * padded, int(C * self.mlp_ratio)
            # qkv and proj run on the padded windows, Q·Kᵀ and A·V within each window, the MLP on the map.
            block = Np * C * 3 * C + 2 * Np * w * w * C + Np * C * C + 2 * N * C * Hd
            total += self.depths[i] * block
            prev = C
        return total + prev * self.num_classes


def relative_position_index(window: int) -> torch.Tensor:
    """(w², w²) index into the (2w-1)² relative position table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, w², w²), offsets in [-(w-1), w-1]
    rel = rel + (window - 1)  # -> [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]  # row-major into the (2w-1, 2w-1) table


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    _, H, W, C = x.shape
    x = x.reshape(-1, H // window, window, W // window, window, C)  # (B, H, W, C) -> (B, H/w, w, W/w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # -> (B, H/w, W/w, w, w, C)
    return x.reshape(-1, (H // window) * (W // window), window * window, C)  # -> (B, nW, w², C)


def window_reverse(x: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    C = x.shape[-1]
    x = x.reshape(-1, H // window, W // window, window, window, C)  # (B, nW, w², C) -> (B, H/w, W/w, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # -> (B, H/w, w, W/w, w, C)
    return x.reshape(-1, H, W, C)  # -> (B, H, W, C)


def shifted_window_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w², w²) additive mask of a cyclically shifted map: 0 within a region, MASK_VALUE across regions
    that the roll brought together in one window (the official Swin's construction)."""
    region = torch.zeros(1, size, size, 1)
    bounds = ((0, size - window), (size - window, size - shift), (size - shift, size))
    label = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            region[:, h0:h1, w0:w1, :] = label
            label += 1
    windows = window_partition(region, window)[0, :, :, 0]  # (1, size, size, 1) -> (nW, w²)
    diff = windows[:, None, :] - windows[:, :, None]  # (nW, w², w²)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a relative position bias and, in shifted blocks, the mask.

    Windows arrive as (B, nW, w², C). Unshifted blocks attend with (B·nW) as the batch and the bias
    (1, heads, w², w²) broadcast over it; shifted blocks fold the windows into the head axis, (B, nW·heads, ...),
    so the per-window mask plus bias is one constant (1, nW·heads, w², w²) that broadcasts over a dynamic batch
    (the shape ONNX Runtime's MultiHeadAttention takes as its attention bias). `attention` is as in
    `vitexport.models.layers.Attention`: "sdpa", or "explicit" MatMul-Softmax-MatMul with the scale on Q first.
    """

    # Buffers, declared for the type checker (register_buffer sets them where it cannot see).
    relative_position_index: torch.Tensor
    attn_mask: torch.Tensor | None

    def __init__(self, dim: int, num_heads: int, window: int, mask: torch.Tensor | None, attention: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = window
        self.attention = attention
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, num_heads) * 0.02)
        # Rebuilt here from the window size, never read from a checkpoint (timm does not save them either).
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def attn_bias(self) -> torch.Tensor:
        N = self.window**2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]  # (N², heads)
        bias = bias.reshape(N, N, self.num_heads).permute(2, 0, 1)  # -> (heads, N, N)
        if self.attn_mask is None:
            return bias.unsqueeze(0)  # (1, heads, N, N)
        nW = self.attn_mask.shape[0]
        bias = bias.unsqueeze(0) + self.attn_mask.unsqueeze(1)  # (1, heads, N, N) + (nW, 1, N, N)
        return bias.reshape(1, nW * self.num_heads, N, N)  # (nW, heads, N, N) -> (1, nW·heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, nW, N, C = x.shape
        h, hd = self.num_heads, self.head_dim
        if self.attn_mask is None:  # windows join the batch
            qkv = self.qkv(x).reshape(-1, N, 3, h, hd)  # (B, nW, N, 3C) -> (B·nW, N, 3, h, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B·nW, h, N, hd)
        else:  # windows join the heads
            qkv = self.qkv(x).reshape(-1, nW, N, 3, h, hd)  # (B, nW, N, 3C) -> (B, nW, N, 3, h, hd)
            qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, -1, nW * h, N, hd)  # -> (3, B, nW·h, N, hd)
            q, k, v = qkv.unbind(0)  # 3 x (B, nW·h, N, hd)
        bias = self.attn_bias()
        if self.attention == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias  # (B·nW, h, N, N) or (B, nW·h, N, N)
            x = attn.softmax(dim=-1) @ v  # (B·nW, h, N, hd) or (B, nW·h, N, hd)
        # (B·nW, h, N, hd) -> (B·nW, N, h, hd), or (B, nW·h, N, hd) -> (B, nW, N, h, hd)
        x = x.transpose(1, 2) if self.attn_mask is None else x.reshape(-1, nW, h, N, hd).transpose(2, 3)
        # An explicit copy: torch.export traces SDPA with a mask with another output memory layout than the
        # decomposed graph the ONNX exporter then builds, and would record the merge of heads below as a view that
        # fails on the decomposed graph (clone stays in the trace; .contiguous() is dropped as a no-op there).
        x = x.clone(memory_format=torch.contiguous_format).reshape(-1, nW, N, C)  # -> (B, nW, N, C)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """Pre-norm block on a (B, H, W, C) map: (shifted) window attention, then an MLP."""

    def __init__(self, dim: int, num_heads: int, res: int, window: int, shift: int, mlp_ratio: float, attention: str):
        super().__init__()
        self.window, self.shift = window, shift
        self.padded = -(-res // window) * window  # the map padded (bottom/right) to whole windows
        mask = shifted_window_mask(self.padded, window, shift) if shift else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, mask, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        if self.shift:  # cyclic shift up-left; the mask keeps wrapped-around regions from attending to each other
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        pad = self.padded - H
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))  # (B, H, W, C) -> (B, Hp, Wp, C)
        x = self.attn(window_partition(x, self.window))  # -> (B, nW, w², C)
        x = window_reverse(x, self.window, self.padded, self.padded)  # -> (B, Hp, Wp, C)
        if pad:
            x = x[:, :H, :W, :]  # -> (B, H, W, C)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring patches concatenated (timm's and the official order: (0,0), (1,0), (0,1), (1,1) as
    (row, col)), normalised and projected: (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # odd sizes padded bottom/right
            H, W = H + H % 2, W + W % 2
        x = x.reshape(-1, H // 2, 2, W // 2, 2, C)  # (B, H, W, C) -> (B, H/2, 2 rows, W/2, 2 cols, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(-1, H // 2, W // 2, 4 * C)  # col-major 2x2 -> (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, res: int, window: int, shift: int,
                 mlp_ratio: float, attention: str):  # fmt: skip
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if in_dim != dim else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                SwinTransformerBlock(dim, num_heads, res, window, shift if i % 2 else 0, mlp_ratio, attention)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, 3, H, W) -> (B, D, H/p, W/p)
        return self.norm(x.permute(0, 2, 3, 1))  # -> (B, H/p, W/p, D), channels last as every stage works


class ClassifierHead(nn.Module):
    """timm's head: global average pooling over the map, then `fc`."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))  # (B, H, W, C) -> (B, C)
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    def __init__(self, cfg: SwinConfig, img_size: int = 224, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        stages, in_dim = [], cfg.embed_dim
        for i, (dim, res, window, shift) in enumerate(cfg.stages(img_size)):
            stages.append(
                SwinTransformerStage(
                    in_dim, dim, cfg.depths[i], cfg.num_heads[i], res, window, shift, cfg.mlp_ratio, attention
                )
            )
            in_dim = dim
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cfg.num_features)
        self.head = ClassifierHead(cfg.num_features, cfg.num_classes)

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding the classifier sees (`forward_head(x, pre_logits=True)`)."""
        return self.cfg.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens of the last stage as a map: (B, 3, H, W) -> (B, H/32, W/32, C)."""
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or with pre_logits the pooled (B, C) embedding the classifier sees."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # -> (B, num_classes)


def build_swin(cfg: SwinConfig, *, img_size: int, attention: str = "sdpa") -> SwinTransformer:
    return SwinTransformer(cfg, img_size, attention)


SIZES = {  # embed dim, depths, heads (Swin paper §3.3)
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}

# name, alias, size, window, input size, timm's default weights tag. The official releases: ImageNet mean/std,
# bicubic, crop 0.9 at 224 and 1.0 at 384; timm's default for Swin-T is the ImageNet-1k training (its 22k
# fine-tune is worse), for Swin-S and Swin-B the ImageNet-22k pretraining fine-tuned on 1k.
VARIANTS = [
    ("swin_tiny_patch4_window7_224", "swin_tiny", "tiny", 7, 224, "ms_in1k"),
    ("swin_small_patch4_window7_224", "swin_small", "small", 7, 224, "ms_in22k_ft_in1k"),
    ("swin_base_patch4_window7_224", "swin_base", "base", 7, 224, "ms_in22k_ft_in1k"),
    ("swin_base_patch4_window12_384", "swin_base_384", "base", 12, 384, "ms_in22k_ft_in1k"),
]

for name, alias, size, window, img, tag in VARIANTS:
    dim, depths, heads = SIZES[size]
    register(
        ModelSpec(
            name=name,
            family="swin",
            arch=SwinConfig(4, window, dim, depths, heads),
            preprocess=PreprocessConfig(img, crop_pct=0.9 if img == 224 else 1.0),
            builder=build_swin,
            checkpoint_filter=checkpoint_filter,
            hub_id=f"{name}.{tag}",
            aliases=(alias,),
        )
    )

# A tiny config for fast tests: 64 px in 4-pixel patches, a 16x16 map, windows of 4; both stages shift (and mask)
# their second block, stage 2 merges patches. At 32 px stage 2's 4x4 map is one window and does not shift.
register(
    ModelSpec(
        name="test_swin",
        family="swin",
        arch=SwinConfig(patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
        preprocess=PreprocessConfig(64, crop_pct=0.9),
        builder=build_swin,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
