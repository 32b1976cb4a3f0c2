"""MobileViT (Mehta and Rastegari, arXiv 2110.02178), with timm's parameter names (timm builds it with byobnet).

A convolutional network of MobileNetV2 inverted residuals whose last three stages end in a MobileViT block: local
3x3 and 1x1 convolutions, a transformer over patches (every pixel position within a patch attends to the same
position in every other patch), then folding back and fusing with the block's input. Unfold and fold are
reshapes whose sizes are all fixed by the input size; only the batch axis is dynamic (the one -1 in each).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.models.layers import Attention
from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.mobilevit import checkpoint_filter

# The cvnets checkpoints take pixels in [0, 1]: no mean subtraction, no scaling.
ZERO_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's (and MobileNet's) channel rounding: to the nearest multiple of 8, never more than 10% down."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class MobileViTConfig:
    stem_chs: int
    channels: tuple[int, int, int, int, int]  # output channels of the five stages
    transformer_dims: tuple[int, int, int]  # width of the transformers in stages 3-5
    num_features: int  # channels of the final 1x1 convolution, which the classifier pools
    expand_ratio: float = 4.0  # inverted residuals' expansion
    ir_depths: tuple[int, int] = (1, 3)  # inverted residuals in stages 1 and 2 (stages 3-5 start with one)
    transformer_depths: tuple[int, int, int] = (2, 4, 3)
    patch_size: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 1000

    @property
    def depth(self) -> int:
        """Attention blocks in all transformers (what ViTConfig.depth counts; the TensorRT audit expects as many)."""
        return sum(self.transformer_depths)

    def layers(self, img_size: int) -> Iterator[tuple[str, int, int, int, int, int]]:
        """(kind, in, out, kernel, groups, output side) of every convolution ("conv" with batch norm, "proj"
        without) and ("transformer", dim, depth, 0, 0, side) of every transformer, in order."""

        def out(side: int, stride: int) -> int:
            return (side - 1) // stride + 1  # kernel 3, padding 1 (or kernel 1): ceil(side / stride)

        side = out(img_size, 2)
        yield "conv", 3, self.stem_chs, 3, 1, side
        cin = self.stem_chs
        for i, cout in enumerate(self.channels):
            blocks = self.ir_depths[i] if i < 2 else 1
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                mid = make_divisible(cin * self.expand_ratio)
                yield "conv", cin, mid, 1, 1, side
                side = out(side, stride)
                yield "conv", mid, mid, 3, mid, side  # depthwise
                yield "conv", mid, cout, 1, 1, side
                cin = cout
            if i >= 2:
                D = self.transformer_dims[i - 2]
                yield "conv", cout, cout, 3, 1, side  # conv_kxk
                yield "proj", cout, D, 1, 1, side  # conv_1x1
                yield "transformer", D, self.transformer_depths[i - 2], 0, 0, side
                yield "conv", D, cout, 1, 1, side  # conv_proj
                yield "conv", 2 * cout, cout, 3, 1, side  # conv_fusion
        yield "conv", cin, self.num_features, 1, 1, side

    def num_params(self, img_size: int = 256) -> int:
        total = 0
        for kind, a, b, k, groups, _ in self.layers(img_size):
            if kind == "transformer":
                D, depth, H = a, b, int(a * self.mlp_ratio)
                block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * H + H) + (H * D + D)
                total += depth * block + 2 * D  # blocks, final norm
            else:
                total += a // groups * b * k * k + (2 * b if kind == "conv" else 0)  # weight, batch norm
        return total + self.num_features * self.num_classes + self.num_classes

    def macs(self, img_size: int) -> int:
        total = 0
        p = self.patch_size
        for kind, a, b, k, groups, side in self.layers(img_size):
            if kind != "transformer":
                total += a // groups * b * k * k * side * side
            else:
                D, depth, H = a, b, int(a * self.mlp_ratio)
                grid = math.ceil(side / p)  # maps not divisible by the patch are resized up to it
                P, N = p * p, grid * grid  # P sequences (pixel positions) of N tokens (patches)
                block = P * (N * D * 3 * D + 2 * N * N * D + N * D * D + 2 * N * D * H)
                total += depth * block
        return total + self.num_features * self.num_classes


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (timm: a byobnet BottleneckBlock with bottle_in and a linear output): 1x1 expansion,
    3x3 depthwise (strided), linear 1x1 projection; residual where the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: float):
        super().__init__()
        mid = make_divisible(cin * expand_ratio)
        self.residual = stride == 1 and cin == cout
        self.conv1_1x1 = ConvNormAct(cin, mid, 1)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride, groups=mid)
        self.conv3_1x1 = ConvNormAct(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return out + x if self.residual else out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.SiLU()  # MobileViT's transformers use SiLU, not GELU
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (timm's ViT Block with LayerNorm eps 1e-5 and SiLU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    def __init__(self, dim: int, cfg: MobileViTConfig, transformer_dim: int, depth: int, side: int, attention: str):
        super().__init__()
        p = cfg.patch_size
        self.patch = p
        self.side = side
        self.padded = math.ceil(side / p) * p  # maps not divisible by the patch are resized up to it, as timm does
        self.conv_kxk = ConvNormAct(dim, dim, 3)
        self.conv_1x1 = nn.Conv2d(dim, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerBlock(transformer_dim, cfg.num_heads, cfg.mlp_ratio, attention) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = ConvNormAct(transformer_dim, dim, 1)
        self.conv_fusion = ConvNormAct(2 * dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))  # (B, C, H, W) -> (B, D, H, W)
        p, S, D = self.patch, self.padded, x.shape[1]
        n = S // p  # patches per side
        if self.side != S:
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
        # Unfold: one sequence per pixel position within a patch, one token per patch.
        x = x.reshape(-1, D, n, p, n, p)  # (B, D, S, S) -> (B, D, n, p, n, p)
        x = x.permute(0, 3, 5, 2, 4, 1).reshape(-1, n * n, D)  # -> (B, p, p, n, n, D) -> (B·p², n², D)
        x = self.norm(self.transformer(x))
        # Fold back.
        x = x.reshape(-1, p, p, n, n, D)  # (B·p², n², D) -> (B, p, p, n, n, D)
        x = x.permute(0, 5, 3, 1, 4, 2).reshape(-1, D, S, S)  # -> (B, D, n, p, n, p) -> (B, D, S, S)
        if self.side != S:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)  # -> (B, C, H, W)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))  # (B, 2C, H, W) -> (B, C, H, W)


class ClassifierHead(nn.Module):
    """timm's head: global average pooling, then `fc`."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return x if pre_logits else self.fc(x)


class MobileViT(nn.Module):
    def __init__(self, cfg: MobileViTConfig, img_size: int = 256, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.stem = ConvNormAct(3, cfg.stem_chs, 3, stride=2)
        side = (img_size - 1) // 2 + 1
        stages, cin = [], cfg.stem_chs
        for i, cout in enumerate(cfg.channels):
            blocks: list[nn.Module] = []
            for j in range(cfg.ir_depths[i] if i < 2 else 1):
                stride = 2 if i > 0 and j == 0 else 1
                side = (side - 1) // stride + 1
                blocks.append(InvertedResidual(cin, cout, stride, cfg.expand_ratio))
                cin = cout
            if i >= 2:
                dim, depth = cfg.transformer_dims[i - 2], cfg.transformer_depths[i - 2]
                blocks.append(MobileViTBlock(cout, cfg, dim, depth, side, attention))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final_conv = ConvNormAct(cin, cfg.num_features, 1)
        self.head = ClassifierHead(cfg.num_features, cfg.num_classes)

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding the classifier sees (`forward_head(x, pre_logits=True)`)."""
        return self.cfg.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map: (B, 3, H, W) -> (B, num_features, H/32, W/32)."""
        return self.final_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or with pre_logits the pooled (B, num_features) embedding the classifier sees."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # -> (B, num_classes)


def build_mobilevit(cfg: MobileViTConfig, *, img_size: int, attention: str = "sdpa") -> MobileViT:
    return MobileViT(cfg, img_size, attention)


# name, stem, stage channels, transformer widths, final channels, expansion (the MobileViT paper's architecture
# table; timm's model_cfgs). timm hosts the cvnets ImageNet-1k weights as NAME.cvnets_in1k: 256 px, crop 0.9,
# bicubic, pixels in [0, 1].
VARIANTS = [
    ("mobilevit_xxs", 16, (16, 24, 48, 64, 80), (64, 80, 96), 320, 2.0),
    ("mobilevit_xs", 16, (32, 48, 64, 80, 96), (96, 120, 144), 384, 4.0),
    ("mobilevit_s", 16, (32, 64, 96, 128, 160), (144, 192, 240), 640, 4.0),
]

for name, stem, channels, dims, features, expand in VARIANTS:
    register(
        ModelSpec(
            name=name,
            family="mobilevit",
            arch=MobileViTConfig(stem, channels, dims, features, expand_ratio=expand),
            preprocess=PreprocessConfig(256, ZERO_MEAN, UNIT_STD, 0.9),
            builder=build_mobilevit,
            checkpoint_filter=checkpoint_filter,
            hub_id=f"{name}.cvnets_in1k",
        )
    )

# A tiny config for fast tests, in the five-stage layout Hugging Face's MobileViTConfig fixes: at 64 px the three
# transformers see 4x4, 2x2 and 1x1 patch grids (at 80 px the last map, 5x5, is resized to 6x6).
register(
    ModelSpec(
        name="test_mobilevit",
        family="mobilevit",
        arch=MobileViTConfig(8, (8, 16, 16, 24, 32), (16, 24, 32), 64, expand_ratio=2.0),
        preprocess=PreprocessConfig(64, ZERO_MEAN, UNIT_STD, 0.9),
        builder=build_mobilevit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
