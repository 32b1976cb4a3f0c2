"""Loading checkpoints into our models: timm state dicts (.pth/.safetensors), the official DeiT releases and
Hugging Face transformers naming, with position embeddings resampled to the model's input size.

Like timm's `checkpoint_filter_fn`, `filter_state_dict` unwraps and remaps a state dict, one branch per format.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.errors import CheckpointError


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch checkpoint. Pickles load with weights_only=True: no code runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a corrupt file
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _unwrap(sd: dict) -> dict[str, torch.Tensor]:
    # The official DeiT releases save {"model": state_dict, ...}; training scripts save {"state_dict": ...}.
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    # DistributedDataParallel prefixes every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


# Hub checkpoints (transformers 4 naming) and transformers 5 modules (`layers.N.attention.o_proj`, `mlp.fc1`).
_HF_BLOCK = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
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
_HF_QKV = "query|key|value|q_proj|k_proj|v_proj"
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
        elif m := re.match(rf"{_HF_LAYER}\.attention\.(?:attention\.)?({_HF_QKV})\.(weight|bias)$", key):
            qkv.setdefault((m[1], m[3]), {})[m[2][0]] = value  # first letter: q, k or v
        elif m := re.match(rf"{_HF_LAYER}\.(.+)\.(weight|bias)$", key):
            out[f"blocks.{m[1]}.{_HF_BLOCK.get(m[2], m[2])}.{m[3]}"] = value
        elif not key.startswith("pooler."):  # the pooler is unused by the classification heads
            out[key] = value
    for (layer, kind), parts in qkv.items():
        # HF keeps separate Q, K, V projections; timm fuses them into one (3D, D) qkv matrix, in that order.
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"layer {layer} has only {sorted(parts)} of its query/key/value {kind}s")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def resample_pos_embed(pos_embed: torch.Tensor, num_tokens: int, num_prefix_tokens: int) -> torch.Tensor:
    """Resize a (1, prefix + g*g, D) position embedding to num_tokens rows by bicubic interpolation of its grid,
    as timm's `resample_abs_pos_embed` (antialiased), keeping the class/distillation rows as they are."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old, new = math.isqrt(grid.shape[1]), math.isqrt(num_tokens - num_prefix_tokens)
    if old * old != grid.shape[1] or new * new != num_tokens - num_prefix_tokens:
        raise CheckpointError(f"pos_embed with {pos_embed.shape[1]} rows is not a square grid plus prefix tokens")
    D = grid.shape[-1]
    grid = grid.reshape(1, old, old, D).permute(0, 3, 1, 2)  # (1, g*g, D) -> (1, D, g, g)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, D).to(pos_embed.dtype)  # -> (1, g'*g', D)
    return torch.cat([prefix, grid], dim=1)


def filter_state_dict(sd: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map any supported checkpoint layout onto `model`'s parameter names and shapes."""
    sd = _unwrap(sd)
    if any(re.match(r"(vit|deit)\.embeddings\.|embeddings\.patch_embeddings\.", k) for k in sd):
        sd = _from_hugging_face(sd)
    target = model.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        num_prefix = 2 if "dist_token" in target else 1
        if pos.shape[-1] == target["pos_embed"].shape[-1]:  # same width: a different input size, not a wrong model
            sd["pos_embed"] = resample_pos_embed(pos, target["pos_embed"].shape[1], num_prefix)
    return sd


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_state_dict(model: nn.Module, sd: dict, source: str = "checkpoint") -> None:
    """Load strictly; on mismatch raise one readable error naming missing, unexpected and mis-shaped keys."""
    sd = filter_state_dict(sd, model)
    target = model.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in target.items() if k in sd and sd[k].shape != v.shape
    ]
    problems = [
        f"{label} {_names(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)  # strictness checked above, num_batches_tracked may be absent


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    load_state_dict(model, read_state_dict(path), source=f"checkpoint {Path(path).name}")


def download_pretrained(spec) -> Path:
    """timm's weights for `spec` from the Hugging Face Hub (needs network access and `huggingface_hub`)."""
    if spec.hub_id is None:
        raise CheckpointError(f"{spec.name} has no published weights; pass --checkpoint PATH")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError("--pretrained needs huggingface_hub: pip install 'vitexport[hub]'") from None
    repo_id = f"timm/{spec.hub_id}"
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename="model.safetensors"))
    except Exception as e:  # offline, DNS failure, missing repo: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot download {repo_id} ({reason}); this machine may be offline: pass --checkpoint PATH"
        ) from None
