"""The MobileViT checkpoint filter: Hugging Face transformers' MobileViTForImageClassification naming -> timm's
(byobnet's) names; timm state dicts pass through."""

from __future__ import annotations

import re

import torch
from torch import nn

from vitexport.errors import CheckpointError
from vitexport.weights import hugging_face as hf

# Hugging Face module names within a stage -> timm's, for the inverted residuals and the MobileViT block.
_HF_CONV = {"expand_1x1": "conv1_1x1", "conv_3x3": "conv2_kxk", "reduce_1x1": "conv3_1x1"}
_HF_VIT = {"conv_kxk": "conv_kxk", "conv_1x1": "conv_1x1", "layernorm": "norm", "conv_projection": "conv_proj"}
_HF_VIT["fusion"] = "conv_fusion"
_HF_TRANSFORMER = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {"conv_stem": "stem", "conv_1x1_exp": "final_conv", "classifier": "head.fc"}


def _conv(rest: str) -> str:
    """A Hugging Face conv layer's tail (`convolution.weight`, `normalization.running_mean`) -> timm's."""
    return rest.replace("convolution.", "conv.").replace("normalization.", "bn.")


def _block(rest: str) -> str:
    """`expand_1x1.convolution.weight` -> `conv1_1x1.conv.weight`."""
    module, _, tail = rest.partition(".")
    if module not in _HF_CONV:
        raise CheckpointError(f"unknown Hugging Face MobileViT inverted residual layer {module}")
    return f"{_HF_CONV[module]}.{_conv(tail)}"


def _from_hugging_face(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        key = key.removeprefix("mobilevit.")
        head, _, rest = key.partition(".")
        if head in _HF_TOP:  # conv_stem.convolution.weight -> stem.conv.weight
            out[f"{_HF_TOP[head]}.{_conv(rest)}"] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.layer\.(\d+)\.(.+)$", key):  # stages 1-2: residuals only
            out[f"stages.{m[1]}.{m[2]}.{_block(m[3])}"] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.downsampling_layer\.(.+)$", key):  # stages 3-5 start with one
            out[f"stages.{m[1]}.0.{_block(m[2])}"] = value
        elif m := re.match(
            r"encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$",
            key,
        ):
            qkv.setdefault((f"stages.{m[1]}.1.transformer.{m[2]}", m[4]), {})[m[3][0]] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.(.+)\.(weight|bias)$", key):
            if m[3] not in _HF_TRANSFORMER:
                raise CheckpointError(f"unknown Hugging Face MobileViT transformer key {key}")
            out[f"stages.{m[1]}.1.transformer.{m[2]}.{_HF_TRANSFORMER[m[3]]}.{m[4]}"] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.(\w+)\.(.+)$", key):  # the MobileViT block's own layers
            if m[2] not in _HF_VIT:
                raise CheckpointError(f"unknown Hugging Face MobileViT key {key}")
            tail = m[3].removeprefix("convolution.") if m[2] == "conv_1x1" else _conv(m[3])  # conv_1x1: a bare conv
            out[f"stages.{m[1]}.1.{_HF_VIT[m[2]]}.{tail}"] = value
        else:
            out[key] = value  # left for the strict load to name
    return out | hf.fuse_qkv(qkv)


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm state dicts and Hugging Face naming -> `model`'s."""
    if any(re.match(r"(mobilevit\.)?conv_stem\.", k) for k in sd):
        return _from_hugging_face(sd)
    return sd
