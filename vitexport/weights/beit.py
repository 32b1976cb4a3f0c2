"""The BEiT checkpoint filter (timm's `checkpoint_filter_fn` for beit.py, plus Hugging Face naming):

- timm state dicts load as they are;
- the official BEiT releases (`{"model": ...}`, unwrapped by `vitexport.weights.unwrap`) use timm's names too, but
  may carry ONE relative position bias shared by all blocks (`rel_pos_bias.relative_position_bias_table`), which is
  expanded into every block's own table (added to it where the block has one too, as the official model sums them);
- Hugging Face `BeitForImageClassification` naming (transformers 4 Hub checkpoints and transformers 5 modules);
- `relative_position_index` buffers are dropped wherever they appear: the model derives them from its grid;
- a checkpoint at another input size gets its relative position tables resampled (timm's
  `resize_rel_pos_bias_table`, the official BEiT fine-tuning's geometric-progression grid, linear interpolation)
  and its absolute position embeddings, if any, resampled as ViT's are.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from vitexport.errors import CheckpointError
from vitexport.weights import hugging_face as hf
from vitexport.weights import resample_pos_embed

_SHARED = "rel_pos_bias.relative_position_bias_table"
_TABLE = "relative_position_bias_table"

_HF_LAYER = r"(?:encoder\.layer|layers)\.(\d+)"
_HF_BLOCK = hf.BLOCK | {  # BEiT's own: layer scale and the relative position bias
    "lambda_1": "gamma_1",
    "lambda_2": "gamma_2",
    "attention.attention.relative_position_bias.relative_position_bias_table": f"attn.{_TABLE}",
    "relative_position_bias.relative_position_bias_table": f"attn.{_TABLE}",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "pooler.layernorm.weight": "fc_norm.weight",
    "pooler.layernorm.bias": "fc_norm.bias",
    "layernorm.weight": "norm.weight",  # only models without mean pooling have it; ours will then refuse it
    "layernorm.bias": "norm.bias",
    "encoder.relative_position_bias.relative_position_bias_table": _SHARED,
    "shared_position_bias.relative_position_bias_table": _SHARED,
}
_HF_QKV = rf"attention\.(?:attention\.)?({hf.QKV})\.(weight|bias)"


def _from_hugging_face(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("classifier."):
            out["head." + key.removeprefix("classifier.")] = value
            continue
        key = key.removeprefix("beit.")
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif m := re.match(rf"{_HF_LAYER}\.{_HF_QKV}$", key):
            part = m[2][0]  # first letter: q, k or v
            if m[3] == "bias":
                out[f"blocks.{m[1]}.attn.{part}_bias"] = value  # BEiT has no key bias; one would be refused
            else:
                qkv.setdefault((f"blocks.{m[1]}", "weight"), {})[part] = value
        elif m := re.match(rf"{_HF_LAYER}\.(.+?)(?:\.(weight|bias))?$", key):
            name = _HF_BLOCK.get(m[2], m[2])
            out[f"blocks.{m[1]}.{name}" + (f".{m[3]}" if m[3] else "")] = value
        else:
            out[key] = value
    return out | hf.fuse_qkv(qkv)


def _offsets(src: int, dst: int) -> list[float]:
    """Source offset positions spread over the destination's range by a geometric progression (the official BEiT
    fine-tuning code, as timm's `resize_rel_pos_bias_table`): near offsets keep unit spacing, far ones stretch."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


def _linear_weights(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(len(targets), len(points)) weights of 1-D linear interpolation on an uneven grid, clamped at its ends."""
    right = torch.bucketize(targets, points).clamp(max=len(points) - 1)
    left = (right - 1).clamp(min=0)
    span = points[right] - points[left]
    t = torch.where(span > 0, (targets - points[left]) / torch.where(span > 0, span, 1.0), 1.0).clamp(0, 1)
    weights = torch.zeros(len(targets), len(points))
    rows = torch.arange(len(targets))
    weights.index_put_((rows, left), 1 - t, accumulate=True)
    weights.index_put_((rows, right), t, accumulate=True)
    return weights


def resize_rel_pos_bias_table(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resample a (S*S + 3, heads) BEiT table (S = 2g-1 offsets per axis, then the three class-token entries) to
    a g' x g' patch grid, per head; the class-token entries are kept."""
    src = math.isqrt(table.shape[0] - 3)
    if src * src != table.shape[0] - 3:
        raise CheckpointError(f"relative position table with {table.shape[0]} rows is not a square offset grid + 3")
    dst = 2 * new_grid - 1
    if src == dst:
        return table
    grid, extra = table[:-3].float(), table[-3:]
    points = torch.tensor(_offsets(src, dst))
    targets = torch.arange(-(dst // 2), dst // 2 + 0.1, 1.0)
    w = _linear_weights(points, targets)  # (dst, src), the same along both axes of the square grid
    z = grid.reshape(src, src, -1)  # (S*S, heads) -> (S, S, heads): rows are y offsets, columns x offsets
    resized = torch.einsum("ys,stv,xt->yxv", w, z, w).reshape(dst * dst, -1)  # -> (S'*S', heads)
    return torch.cat([resized.to(table.dtype), extra])


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm, official BEiT (shared or per-block relative position bias) and Hugging Face layouts -> `model`'s."""
    if any(re.match(r"(beit\.)?embeddings\.patch_embeddings\.", k) for k in sd):
        sd = _from_hugging_face(sd)
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    target = model.state_dict()
    shared = sd.pop(_SHARED, None)
    if shared is not None:
        for key in target:
            if key.endswith(f"attn.{_TABLE}"):
                sd[key] = sd[key] + shared if key in sd else shared
    for key, value in list(sd.items()):
        # Same number of heads but another table size: the checkpoint's input size differs (another model keeps its
        # mismatch, which the strict load reports).
        wanted = target.get(key) if key.endswith(_TABLE) else None
        if wanted is not None and value.shape != wanted.shape and value.shape[-1] == wanted.shape[-1]:
            sd[key] = resize_rel_pos_bias_table(value, (math.isqrt(wanted.shape[0] - 3) + 1) // 2)  # S' = 2g' - 1
    pos, wanted = sd.get("pos_embed"), target.get("pos_embed")
    if pos is not None and wanted is not None and pos.shape != wanted.shape and pos.shape[-1] == wanted.shape[-1]:
        sd["pos_embed"] = resample_pos_embed(pos, wanted.shape[1], num_prefix_tokens=1)
    return sd
