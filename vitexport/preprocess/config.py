"""A model's preprocessing as data: PreprocessConfig (registered with the model, recorded in every artifact).

One description covers timm's eval transform (our registered models, `timm_cfg.from_timm_cfg`) and transformers'
image processors (`hf.from_hf_processor`): resize (short side, or to a fixed height x width), centre crop or none,
resample filter and whose kernels (Pillow's or torchvision's), rescale factor, mean/std, channel order. Its defaults
are timm's, so every sidecar written before the other fields existed still means what it meant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from vitexport.errors import ArtifactError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the ViT (AugReg) checkpoints normalise to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)

# Pillow's filters by name, in the order of their numbers (Image.Resampling and transformers' PILImageResampling):
# a preprocessor_config.json's `resample: 3` is INTERPOLATIONS[3], bicubic.
INTERPOLATIONS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")
DEFAULT_RESCALE = 1 / 255
# Where the centre crop's offset (resized - crop) / 2 is rounded: timm and torchvision round (half to even, Python's
# round), transformers' Pillow processors floor, its torchvision processors truncate (toward zero: floor, except where
# the crop is over the resize, padded). Only odd differences tell them apart, and then by one pixel.
CROP_ROUNDINGS = ("round", "floor", "trunc")
CHANNEL_ORDERS = ("RGB", "BGR")  # BGR: MobileViT's processor flips the channels (do_flip_channel_order)
# Whose kernels resize: Pillow's (timm, transformers' Pillow processors) or torchvision's on a uint8 tensor, with
# antialiasing (transformers' torchvision processors: 4's `...Fast`, 5's default; vitexport.preprocess.tv_backend).
# The two differ by a few levels of 255 on some pixels: the same geometry is not the same pixels.
RESIZE_BACKENDS = ("pil", "torchvision")
TORCHVISION_FILTERS = ("nearest", "lanczos", "bilinear", "bicubic")  # torchvision resizes a tensor with no box/hamming


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's S x S input (S = input_size).

    Classifiers: resize, then (crop) centre crop S x S, then x * rescale, (x - mean) / std per channel (mean and std
    in RGB order), then the channel order. The resize: `resize` None is timm's (short side to
    floor(S / crop_pct), long side in proportion); an int, the short side to that; (height, width), exactly that
    size, aspect ratio not kept. Without the crop, the resize must make S x S. crop_pct only counts when `resize` is
    None. `resize_backend` "torchvision" does all of it as transformers' torchvision processors do (torch's
    antialiased kernels on the uint8 image, their fused rescale and normalisation), "pil" with Pillow and numpy.

    Detectors (`shortest_edge` set) instead keep the whole image: DETR's evaluation resize (shorter side to
    `shortest_edge`, longer side at most `longest_edge`), scaled down further to fit the input_size x input_size
    canvas, on which it sits top-left, padded; the model's pixel_mask marks the image.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    shortest_edge: int | None = None
    longest_edge: int | None = None
    resize: int | tuple[int, int] | None = None
    crop: bool = True
    crop_rounding: str = "round"
    rescale: float = DEFAULT_RESCALE
    channel_order: str = "RGB"
    resize_backend: str = "pil"

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ArtifactError(f"preprocessing: {problem}")

    @property
    def detection(self) -> bool:
        return self.shortest_edge is not None

    @property
    def resize_short(self) -> int | None:
        """The short side the resize makes (aspect ratio kept), or None for a fixed height x width resize."""
        if isinstance(self.resize, tuple):
            return None
        return self.resize if self.resize is not None else math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }
        if self.detection:  # only then: classifiers' dicts stay what older vitexports wrote and read
            d |= {"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge}
        for name in NEW_FIELDS:  # likewise each later field, only where it is not its default
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                d[name] = list(value) if isinstance(value, tuple) else value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        edges: dict[str, Any] = {k: None if d.get(k) is None else int(d[k]) for k in ("shortest_edge", "longest_edge")}
        later: dict[str, Any] = {}
        if d.get("resize") is not None:
            resize = d["resize"]
            later["resize"] = tuple(int(v) for v in resize) if isinstance(resize, (list, tuple)) else int(resize)
        if "crop" in d:
            later["crop"] = bool(d["crop"])
        if "crop_rounding" in d:
            later["crop_rounding"] = str(d["crop_rounding"])
        if "rescale" in d:
            later["rescale"] = float(d["rescale"])
        if "channel_order" in d:
            later["channel_order"] = str(d["channel_order"])
        if "resize_backend" in d:
            later["resize_backend"] = str(d["resize_backend"])
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            **edges,
            **later,
        )


NEW_FIELDS = ("resize", "crop", "crop_rounding", "rescale", "channel_order", "resize_backend")
_DEFAULTS = {f.name: f.default for f in fields(PreprocessConfig)}


def _problem(cfg: PreprocessConfig) -> str | None:
    """What makes `cfg` a preprocessing no function here applies, in a few words; None when it is sound."""
    S = cfg.input_size
    if cfg.interpolation not in INTERPOLATIONS:
        return f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {cfg.interpolation!r}"
    if cfg.crop_rounding not in CROP_ROUNDINGS:
        return f"crop_rounding must be one of {', '.join(CROP_ROUNDINGS)}, not {cfg.crop_rounding!r}"
    if cfg.resize_backend not in RESIZE_BACKENDS:
        return f"resize_backend must be pil or torchvision, not {cfg.resize_backend!r}"
    if cfg.resize_backend == "torchvision" and cfg.interpolation not in TORCHVISION_FILTERS:
        return f"torchvision resizes with {', '.join(TORCHVISION_FILTERS)}, not {cfg.interpolation}"
    if cfg.channel_order not in CHANNEL_ORDERS:
        return f"channel_order must be RGB or BGR, not {cfg.channel_order!r}"
    if not cfg.rescale > 0:
        return f"rescale must be over 0, not {cfg.rescale}"
    sides = cfg.resize if isinstance(cfg.resize, tuple) else (cfg.resize,) if cfg.resize is not None else ()
    if isinstance(cfg.resize, tuple) and len(sides) != 2:
        return f"resize takes a short side or (height, width), not {cfg.resize!r}"
    if any(not isinstance(v, int) or v < 1 for v in sides):
        return f"resize takes whole sides of at least 1 pixel, not {cfg.resize!r}"
    if not cfg.crop and cfg.resize != (S, S):
        return f"without a centre crop the resize must make the model's {S} x {S}, not {cfg.resize!r}"
    if cfg.crop and sides and min(sides) < S and cfg.crop_rounding == "round":
        # The crop fills the outside with zeros where the offset is floored or truncated, as transformers' centre crops
        # pad; torchvision's own pads the other way on odd differences, and timm's crop_pct <= 1 never gets here.
        return f"a resize to {cfg.resize!r} is smaller than the {S} x {S} crop"
    return None
