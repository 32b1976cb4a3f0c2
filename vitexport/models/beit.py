"""BEiT (Bao et al., arXiv 2106.08254): a ViT pre-trained by masked image modelling, fine-tuned with a relative
position bias in every block, layer scale, and mean pooling of the patch tokens. timm's parameter names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.models.layers import Mlp, PatchEmbed
from vitexport.preprocess import INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.beit import checkpoint_filter


@dataclass(frozen=True)
class BeitConfig:
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    init_values: float = 0.1  # layer scale's initial value (fine-tuned checkpoints carry trained gamma_1/gamma_2)
    abs_pos_embed: bool = False  # the released classifiers use relative position bias only

    def grid(self, img_size: int) -> int:
        return img_size // self.patch_size

    def num_tokens(self, img_size: int) -> int:
        return self.grid(img_size) ** 2 + 1  # patches + class token

    def num_relative_distances(self, img_size: int) -> int:
        # (2g-1)² patch-to-patch offsets + cls->token, token->cls, cls->cls
        return (2 * self.grid(img_size) - 1) ** 2 + 3

    def num_params(self, img_size: int) -> int:
        # The relative position tables (and pos_embed, if any) grow with the grid: the count depends on the size.
        D, H, C = self.embed_dim, int(self.embed_dim * self.mlp_ratio), self.num_classes
        table = self.num_relative_distances(img_size) * self.num_heads
        attn = (3 * D * D + 2 * D) + table + (D * D + D)  # qkv with q and v biases only, table, proj
        block = 4 * D + attn + (D * H + H) + (H * D + D) + 2 * D  # norms, attention, mlp, gamma_1 and gamma_2
        patch = 3 * self.patch_size**2 * D + D
        tokens = D + (self.num_tokens(img_size) * D if self.abs_pos_embed else 0)  # cls token, pos_embed
        return patch + tokens + self.depth * block + 2 * D + (D * C + C)  # ... fc_norm, head

    def macs(self, img_size: int) -> int:
        D, H, T = self.embed_dim, int(self.embed_dim * self.mlp_ratio), self.num_tokens(img_size)
        patches = self.grid(img_size) ** 2
        block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * H  # qkv, QKᵀ and AV, proj, mlp
        return patches * D * 3 * self.patch_size**2 + self.depth * block + D * self.num_classes


def relative_position_index(grid: int) -> torch.Tensor:
    """(T, T) indices into a (num_relative_distances, heads) table, T = g² + 1; the class token's row and column
    use the table's last three entries (timm's and the official BEiT's `gen_relative_position_index`)."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)  # (2, g²)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (g², g², 2) offsets in [-(g-1), g-1]
    rel = rel + (grid - 1)  # -> [0, 2g-2]
    flat = rel[:, :, 0] * (2 * grid - 1) + rel[:, :, 1]  # row-major into the (2g-1) x (2g-1) offset grid
    num = (2 * grid - 1) ** 2 + 3
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = flat
    index[0, :] = num - 3  # cls -> token
    index[:, 0] = num - 2  # token -> cls
    index[0, 0] = num - 1  # cls -> cls
    return index


class BeitAttention(nn.Module):
    """Multi-head self-attention with q and v biases (no k bias) and a learned relative position bias.

    The bias joins the scores as an additive float mask: `sdpa` passes it as `attn_mask` (one fused op where the
    exporter knows it), `explicit` adds it between Q·Kᵀ and Softmax with the scale applied to Q first, as
    `vitexport.models.layers.Attention` does and for the same reasons.
    """

    relative_position_index: torch.Tensor  # a buffer, declared for the type checker

    def __init__(self, dim: int, num_heads: int, grid: int, attention: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attention = attention
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
        # Derived from the grid alone, so never read from a checkpoint (non-persistent, as in timm).
        self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> torch.Tensor:
        T = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]  # (T*T, H)
        return bias.reshape(T, T, -1).permute(2, 0, 1).unsqueeze(0)  # -> (1, H, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # BEiT learns no key bias: a key bias adds the same amount to every score of a query, which Softmax ignores.
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])  # (3D,)
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, hd)
        rel = self.relative_position_bias()  # (1, H, N, N), broadcast over the batch
        if self.attention == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=rel)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + rel  # (B, H, N, N)
            x = attn.softmax(dim=-1) @ v  # (B, H, N, hd)
        # A copy, not a view: torch.export traces SDPA with a mask (CPU kernel) to an output whose transpose is
        # contiguous, so a reshape would be recorded as a view, which fails once the exporter decomposes SDPA into
        # ops with other strides. contiguous() is a no-op there and would be dropped; clone() stays.
        x = x.transpose(1, 2).clone(memory_format=torch.contiguous_format).reshape(B, N, D)  # -> (B, N, D)
        return self.proj(x)


class BeitBlock(nn.Module):
    """Pre-norm block whose two residual branches are scaled per channel (layer scale, gamma_1 and gamma_2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, grid: int, init_values: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BeitAttention(dim, num_heads, grid, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class Beit(nn.Module):
    def __init__(self, cfg: BeitConfig, img_size: int = 224, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        D, grid = cfg.embed_dim, cfg.grid(img_size)
        self.num_features = D  # width of forward_embeddings
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed: nn.Parameter | None = None
        if cfg.abs_pos_embed:
            self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens(img_size), D) * 0.02)
        self.blocks = nn.Sequential(
            *[BeitBlock(D, cfg.num_heads, cfg.mlp_ratio, grid, cfg.init_values, attention) for _ in range(cfg.depth)]
        )
        self.fc_norm = nn.LayerNorm(D, eps=1e-6)  # after pooling; no final norm over all tokens
        self.head: nn.Module = nn.Linear(D, cfg.num_classes)  # nn.Identity() after remove_head()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, 3, H, W) -> (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # -> (B, T, D), T = N + 1
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.blocks(x)

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation the classifier sees: mean of the patch tokens, then fc_norm -> (B, D)."""
        return self.fc_norm(self.forward_features(x)[:, 1:].mean(dim=1))

    def remove_head(self) -> None:
        """Drop the classifier: `forward` then returns `forward_embeddings` (vitexport's `--head features`)."""
        self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_embeddings(x))  # -> (B, num_classes)


def build_beit(cfg: BeitConfig, *, img_size: int, attention: str = "sdpa") -> Beit:
    return Beit(cfg, img_size, attention)


# name, alias, width, depth, heads, input size, layer scale init. timm hosts the official BEiT fine-tuned weights
# (pre-trained on ImageNet-22k, fine-tuned on 22k then 1k) as NAME.in22k_ft_in22k_in1k: inputs in [-1, 1]
# (mean/std 0.5), bicubic, crop 0.9 at 224 and the whole image at 384 (timm's pretrained cfgs).
VARIANTS = [
    ("beit_base_patch16_224", "beit_base", 768, 12, 12, 224, 0.1),
    ("beit_large_patch16_224", "beit_large", 1024, 24, 16, 224, 1e-5),
    ("beit_base_patch16_384", "beit_base_384", 768, 12, 12, 384, 0.1),
]

for name, alias, dim, depth, heads, img, init in VARIANTS:
    register(
        ModelSpec(
            name=name,
            family="beit",
            arch=BeitConfig(16, dim, depth, heads, init_values=init),
            preprocess=PreprocessConfig(img, INCEPTION_MEAN, INCEPTION_STD, 0.9 if img == 224 else 1.0),
            builder=build_beit,
            checkpoint_filter=checkpoint_filter,
            hub_id=f"{name}.in22k_ft_in22k_in1k",
            aliases=(alias,),
        )
    )

# A tiny config for fast tests: a 4x4 grid of 16-pixel patches, width 64, two blocks.
register(
    ModelSpec(
        name="test_beit",
        family="beit",
        arch=BeitConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2),
        preprocess=PreprocessConfig(64, INCEPTION_MEAN, INCEPTION_STD, 0.9),
        builder=build_beit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
