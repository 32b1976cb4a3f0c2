"""The Swin checkpoint filter: the official releases and Hugging Face naming -> timm 1.0's (timm's
`checkpoint_filter_fn` for swin_transformer.py).

timm 1.0 merges patches at the *start* of stages 2-4 (`layers.{i+1}.downsample`); the official releases, timm
before 1.0 and Hugging Face at the *end* of stages 1-3 (`layers.{i}.downsample`). The relative position index and
the shifted-window mask are buffers our model rebuilds for its input size, so saved copies are dropped.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.errors import CheckpointError
from vitexport.weights import hugging_face as hf

_BUFFERS = ("relative_position_index", "attn_mask")

# Hugging Face block modules: transformers 4 names (the Hub checkpoints) and transformers 5 names.
_HF_BLOCK = {
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
} | hf.BLOCK
_HF_TOP = {
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "embeddings.norm": "patch_embed.norm",
    "layernorm": "norm",
    "classifier": "head.fc",
}
_HF_QKV = rf"attention\.(?:self\.)?({hf.QKV})"


def _shift_downsample(key: str) -> str:
    """layers.{i}.downsample (end of stage i) -> layers.{i+1}.downsample (start of stage i+1)."""
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)


def _from_hugging_face(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' SwinForImageClassification (or headless SwinModel) naming -> timm's, downsample moved."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        key = key.removeprefix("swin.")
        if key.endswith(_BUFFERS):
            continue
        if m := re.match(r"(.+)\.(weight|bias)$", key):
            module, kind = m[1], m[2]
            if module in _HF_TOP:
                out[f"{_HF_TOP[module]}.{kind}"] = value
                continue
        if m := re.match(rf"encoder\.layers\.(\d+)\.blocks\.(\d+)\.{_HF_QKV}\.(weight|bias)$", key):
            qkv.setdefault((f"layers.{m[1]}.blocks.{m[2]}", m[4]), {})[m[3][0]] = value  # first letter: q, k or v
        elif m := re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+?)(\.weight|\.bias|)$", key):
            if m[3] not in _HF_BLOCK:
                raise CheckpointError(f"unknown Hugging Face Swin key {key}")
            out[f"layers.{m[1]}.blocks.{m[2]}.{_HF_BLOCK[m[3]]}{m[4]}"] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.downsample\.(.+)$", key):
            out[f"layers.{int(m[1]) + 1}.downsample.{m[2]}"] = value
        else:
            out[key] = value  # left for the strict load to name
    return out | hf.fuse_qkv(qkv)


def resize_relative_position_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A ((2w-1)², heads) table resized to another window by bicubic interpolation of its (2w-1) x (2w-1) grid, as
    the official Swin code fine-tunes across window sizes."""
    old, heads = math.isqrt(table.shape[0]), table.shape[1]
    if old * old != table.shape[0]:
        raise CheckpointError(f"a relative position table of {table.shape[0]} rows is not a square grid")
    new = 2 * window - 1
    grid = table.permute(1, 0).reshape(1, heads, old, old)  # ((2w-1)², heads) -> (1, heads, 2w-1, 2w-1)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new * new).permute(1, 0).to(table.dtype)  # -> ((2w'-1)², heads)


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm 1.0 state dicts, the official releases (already unwrapped), timm < 1.0 and Hugging Face naming ->
    `model`'s. A stage whose window the model clamps to a smaller feature map (inputs below the checkpoint's size)
    gets its relative position tables resized."""
    if any(re.match(r"(swin\.)?embeddings\.patch_embeddings\.", k) for k in sd):
        sd = _from_hugging_face(sd)
    else:
        sd = {k: v for k, v in sd.items() if not k.endswith(_BUFFERS)}
        # Stage 1 merges patches only in the end-of-stage layout, so its downsample tells the layouts apart (the
        # classifier cannot: headless checkpoints have none).
        if "layers.0.downsample.reduction.weight" in sd:
            sd = {_shift_downsample(k): v for k, v in sd.items()}
            sd = {re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k): v for k, v in sd.items()}
    target = model.state_dict()
    resized = {}
    for key, table in sd.items():
        want = target.get(key)
        if not key.endswith("relative_position_bias_table") or want is None or table.shape == want.shape:
            continue
        if table.shape[1] == want.shape[1]:  # same heads: another window, not another model
            resized[key] = resize_relative_position_table(table, (math.isqrt(want.shape[0]) + 1) // 2)
    return sd | resized
