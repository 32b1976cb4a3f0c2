"""Loading checkpoints into our models: reading .pth/.safetensors safely, unwrapping training wrappers, strict
loading with one readable error, and timm's hub weights.

Each family remaps foreign layouts (official releases, Hugging Face naming, another input size) with its own
checkpoint filter, one module here per family (`vitexport.weights.vit`), like timm's `checkpoint_filter_fn`;
its ModelSpec names it, and `vitexport.models.create_model` passes it in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vitexport.errors import CheckpointError, first_line
from vitexport.fileio import check_user_file, open_user_file

if TYPE_CHECKING:
    from vitexport.registry import ModelSpec

# A family's remapping of foreign layouts onto its model: (unwrapped state dict, model) -> state dict.
CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def sha256_file(path: str | Path) -> str:
    """A checkpoint's sha256, read only if it is a regular file (a FIFO would block the open for ever)."""
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = hashlib.sha256()
    with open_user_file(path, "checkpoint", error=CheckpointError) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch checkpoint. Pickles load with weights_only=True: no code runs."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (
        check_user_file(path, "checkpoint", error=CheckpointError).st_size == 0
    ):  # torch says only "EOFError": name the likely cause (an interrupted download)
        raise CheckpointError(f"cannot read checkpoint {path}: it is empty (0 bytes); download or save it again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a corrupt file
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
        raise CheckpointError(f"cannot read checkpoint {path}: not a {kind} checkpoint ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def unwrap(sd: dict) -> dict[str, torch.Tensor]:
    # The official DeiT releases save {"model": state_dict, ...}; training scripts save {"state_dict": ...}.
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    # DistributedDataParallel prefixes every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


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


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_state_dict(
    model: nn.Module, sd: dict, source: str = "checkpoint", checkpoint_filter: CheckpointFilter | None = None
) -> None:
    """Unwrap, remap with the family's filter, then load strictly; on mismatch raise one readable error naming
    missing, unexpected and mis-shaped keys."""
    sd = unwrap(sd)
    if checkpoint_filter is not None:
        sd = checkpoint_filter(sd, model)
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


def load_checkpoint(model: nn.Module, path: str | Path, checkpoint_filter: CheckpointFilter | None = None) -> None:
    load_state_dict(model, read_state_dict(path), f"checkpoint {Path(path).name}", checkpoint_filter)


def download_pretrained(spec: ModelSpec) -> Path:
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
        reason = first_line(e)
        raise CheckpointError(
            f"cannot download {repo_id} ({reason}); this machine may be offline: pass --checkpoint PATH"
        ) from None
