"""The ViT/DeiT checkpoint filter: Hugging Face transformers naming -> timm's, and position embeddings resampled
to the model's input size (timm's `checkpoint_filter_fn` for vision_transformer.py)."""

from __future__ import annotations

import re

import torch
from torch import nn

from vitexport.weights import hugging_face as hf
from vitexport.weights import resample_pos_embed

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = r"(?:encoder\.layer|layers)\.(\d+)"
_HF_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}


def _from_hugging_face(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViTForImageClassification / DeiTForImageClassificationWithTeacher naming -> timm's."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        if head in _HF_HEADS:  # classifier.weight -> head.weight
            out[f"{_HF_HEADS[head]}.{rest}"] = value
            continue
        key = re.sub(r"^(vit|deit)\.", "", key)
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif m := re.match(rf"{_HF_LAYER}\.attention\.(?:attention\.)?({hf.QKV})\.(weight|bias)$", key):
            qkv.setdefault((f"blocks.{m[1]}", m[3]), {})[m[2][0]] = value  # first letter: q, k or v
        elif m := re.match(rf"{_HF_LAYER}\.(.+)\.(weight|bias)$", key):
            out[f"blocks.{m[1]}.{hf.BLOCK.get(m[2], m[2])}.{m[3]}"] = value
        elif not key.startswith("pooler."):  # the pooler is unused by the classification heads
            out[key] = value
    return out | hf.fuse_qkv(qkv)


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm state dicts, the official DeiT releases (already unwrapped) and Hugging Face naming -> `model`'s."""
    if any(re.match(r"(vit|deit)\.embeddings\.|embeddings\.patch_embeddings\.", k) for k in sd):
        sd = _from_hugging_face(sd)
    target = model.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        num_prefix = 2 if "dist_token" in target else 1
        if pos.shape[-1] == target["pos_embed"].shape[-1]:  # same width: a different input size, not a wrong model
            sd = dict(sd, pos_embed=resample_pos_embed(pos, target["pos_embed"].shape[1], num_prefix))
    return sd
