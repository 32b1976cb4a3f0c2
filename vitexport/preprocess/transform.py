"""The one function that applies a PreprocessConfig (a classifier's resize and centre crop, a detector's resize onto a
padded canvas), in numpy and Pillow only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport.errors import ImageError
from vitexport.preprocess.config import PreprocessConfig
from vitexport.preprocess.decode import MAX_RESIZED_PIXELS, _decode

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports this package for --help
    import numpy as np
    from PIL import Image

    from vitexport.preprocess.decode import ImageSource


def _resample(name: str) -> int:
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[name]


def preprocess_image(image: ImageSource, cfg: PreprocessConfig) -> np.ndarray:
    """A PIL image, a path or encoded bytes -> float32 (3, S, S): resize the short side to S / crop_pct,
    center crop S x S, scale to [0, 1], normalise by mean/std (timm's and torchvision's eval transform)."""
    if cfg.detection:  # a center crop would cut objects off and no mask would say where the image is
        raise ImageError("this is a detector's preprocessing (resize onto a padded canvas), not a classifier's crop")
    decoded = _decode(image)
    size = cfg.input_size
    scale = math.floor(size / cfg.crop_pct)
    w, h = decoded.size
    # Short side to `scale`, long side in proportion (torchvision's Resize(int) rounding).
    new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image {w} x {h} would be resized to {new_w} x {new_h}, over the limit of {MAX_RESIZED_PIXELS} pixels "
            "(an aspect ratio this extreme is not a photograph)"
        )
    resized = decoded.resize((new_w, new_h), _resample(cfg.interpolation))
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    cropped = resized.crop((left, top, left + size, top + size))
    import numpy as np

    return np.ascontiguousarray(_normalised(cropped, cfg).transpose(2, 0, 1))  # -> (3, S, S)


def _normalised(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """(H, W, 3) float32: [0, 1], then (x - mean) / std."""
    import numpy as np

    x = np.asarray(image, dtype=np.float32) / 255.0
    return (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)


@dataclass(frozen=True)
class DetectionInput:
    """A detector's input for one image, and what its boxes are scaled back to."""

    pixels: np.ndarray  # (3, S, S) float32: the resized image top-left on a zero canvas (zero after normalising)
    mask: np.ndarray  # (S, S) int64: 1 on the image, 0 on the padding
    size: tuple[int, int]  # the original (height, width): DETR's boxes are fractions of the image, not the canvas


def detection_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(height, width) after DETR's evaluation resize (transformers' get_size_with_aspect_ratio: shorter side to
    shortest_edge unless the longer would pass longest_edge), then scaled down to fit the S x S canvas."""
    size, max_size = cfg.shortest_edge, cfg.longest_edge
    if size is None:
        raise ImageError("this is a classifier's preprocessing (a center crop), not a detector's")
    raw: float | None = None
    if max_size is not None and max(height, width) / min(height, width) * size > max_size:
        raw = max_size * min(height, width) / max(height, width)
        size = round(raw)
    if (height <= width and height == size) or (width <= height and width == size):
        oh, ow = height, width
    elif width < height:
        ow, oh = size, int((raw if raw is not None else size) * height / width)
    else:
        oh, ow = size, int((raw if raw is not None else size) * width / height)
    canvas = cfg.input_size
    if max(oh, ow) > canvas:  # a fixed canvas is what lets Triton batch images of any shape
        fit = canvas / max(oh, ow)
        oh, ow = max(1, min(canvas, round(oh * fit))), max(1, min(canvas, round(ow * fit)))
    return oh, ow


def preprocess_detection(image: ImageSource, cfg: PreprocessConfig) -> DetectionInput:
    """A PIL image, a path or encoded bytes -> a detector's input: the whole image resized (bilinear, as DETR's
    processor), normalised, placed top-left on the S x S canvas, and its mask (transformers' DetrImageProcessor with
    pad_size S x S gives the same arrays)."""
    import numpy as np
    from PIL import Image

    if not cfg.detection:
        raise ImageError("this is a classifier's preprocessing (a center crop), not a detector's")
    decoded = _decode(image)
    w, h = decoded.size
    oh, ow = detection_size(h, w, cfg)
    resized = _normalised(decoded.resize((ow, oh), Image.Resampling.BILINEAR), cfg)
    S = cfg.input_size
    pixels = np.zeros((3, S, S), np.float32)
    pixels[:, :oh, :ow] = resized.transpose(2, 0, 1)
    mask = np.zeros((S, S), np.int64)
    mask[:oh, :ow] = 1
    return DetectionInput(pixels, mask, (h, w))


def load_images(paths: list[str | Path], cfg: PreprocessConfig) -> np.ndarray:
    """A batch (N, 3, S, S) from image files."""
    import numpy as np

    return np.stack([preprocess_image(Path(p), cfg) for p in paths])
