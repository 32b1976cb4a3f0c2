"""timm's pretrained_cfg (input_size, crop_pct, crop_mode, interpolation, mean, std) as a PreprocessConfig: the
mapping of timm's eval transform (`timm.data.create_transform(**resolve_data_config(...))`: Resize, CenterCrop,
ToTensor, Normalize on Pillow) onto the one preprocessing description. The registered models' configs are this
mapping of their checkpoints' pretrained_cfg (tests/test_preprocess_semantics.py checks each against timm)."""

from __future__ import annotations

import math
from typing import Any

from vitexport.errors import ArtifactError
from vitexport.preprocess.config import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, PreprocessConfig

DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT: what a pretrained_cfg without crop_pct gets


def from_timm_cfg(cfg: dict[str, Any]) -> PreprocessConfig:
    """A timm pretrained_cfg (or resolve_data_config's dict) -> its eval transform as a PreprocessConfig. crop_mode
    `center` (the default) is timm's short-side resize and centre crop; `squash` resizes to a square first; `border`
    (letterboxing) and a non-square input are refused in one line."""
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if channels != 3 or height != width:
        raise ArtifactError(f"input_size: {tuple(cfg['input_size'])}: the served model takes 3 x S x S")
    crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
    interpolation = cfg.get("interpolation") or "bilinear"  # transforms_imagenet_eval's default
    if interpolation not in INTERPOLATIONS:
        raise ArtifactError(f"interpolation: {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    mode = cfg.get("crop_mode") or "center"
    if mode == "center":
        resize = None  # timm's Resize(floor(S / crop_pct)): PreprocessConfig's default
    elif mode == "squash":
        side = math.floor(height / crop_pct)
        resize = (side, side)
    else:
        raise ArtifactError(f"crop_mode: {mode!r}: vitexport maps timm's center and squash crops only")
    return PreprocessConfig(
        int(height),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        crop_pct,
        interpolation,
        resize=resize,
    )
