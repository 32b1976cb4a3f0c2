"""The one function that applies a PreprocessConfig (a classifier's resize and centre crop, a detector's resize onto a
padded canvas), in numpy and Pillow only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport.errors import ImageError
from vitexport.preprocess.config import PreprocessConfig
from vitexport.preprocess.decode import MAX_RESIZED_PIXELS, REDUCE_GAP, _decode

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports this package for --help
    import numpy as np
    from PIL import Image

    from vitexport.preprocess.decode import ImageSource


def _resample(name: str) -> int:
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[name]


def preprocess_image(image: ImageSource, cfg: PreprocessConfig, *, fast: bool = False) -> np.ndarray:
    """A PIL image, a path or encoded bytes -> float32 (3, S, S): resize the short side to S / crop_pct,
    center crop S x S, scale to [0, 1], normalise by mean/std (timm's and torchvision's eval transform).

    `fast`: a large JPEG is decoded at a reduced size (no smaller than REDUCE_GAP times the resize's output) and a
    large image box-reduced to that before the final filter, and the pixels normalised straight into the (3, S, S)
    array; the default, exact path is the reference it is gated against (`export.gate.preprocess_gate`)."""
    if cfg.detection:  # a center crop would cut objects off and no mask would say where the image is
        raise ImageError("this is a detector's preprocessing (resize onto a padded canvas), not a classifier's crop")
    size = cfg.input_size
    decoded, (w, h) = _decode(image, (lambda w, h: _short_side_size(w, h, cfg)) if fast else None)
    new_w, new_h = _short_side_size(w, h, cfg)
    resized = _resize(decoded, (new_w, new_h), _resample(cfg.interpolation), fast=fast)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    cropped = resized.crop((left, top, left + size, top + size))
    import numpy as np

    if fast:
        out = np.empty((3, size, size), np.float32)
        _normalise_into(out, cropped, cfg)
        return out
    return np.ascontiguousarray(_normalised(cropped, cfg).transpose(2, 0, 1))  # -> (3, S, S)


def _short_side_size(w: int, h: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """A classifier's resize: short side to `input_size / crop_pct`, long side in proportion (torchvision's
    Resize(int) rounding), within MAX_RESIZED_PIXELS."""
    scale = math.floor(cfg.input_size / cfg.crop_pct)
    new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image {w} x {h} would be resized to {new_w} x {new_h}, over the limit of {MAX_RESIZED_PIXELS} pixels "
            "(an aspect ratio this extreme is not a photograph)"
        )
    return new_w, new_h


def _resize(image: Image.Image, size: tuple[int, int], resample: int, *, fast: bool) -> Image.Image:
    """The final filter; fast: after a box reduction by whole factors down to REDUCE_GAP times `size` (Pillow's
    reducing_gap: a 12 MP PNG is resized from ~1/5 of its pixels)."""
    if image.size == size:
        return image
    return image.resize(size, resample, reducing_gap=REDUCE_GAP if fast else None)


def _normalise_into(out: np.ndarray, image: Image.Image, cfg: PreprocessConfig) -> None:
    """`out` (3, h, w) float32, a view of the model's input, set to (image / 255 - mean) / std channel by channel in
    place: no float (h, w, 3) intermediate and no transpose copy, and the same float32 arithmetic as `_normalised`,
    so the fast path's pixels are the exact path's wherever nothing was reduced."""
    import numpy as np

    pixels = np.asarray(image)  # (h, w, 3) uint8
    for c in range(3):
        np.divide(pixels[..., c], np.float32(255.0), out=out[c], dtype=np.float32)
        out[c] -= np.float32(cfg.mean[c])
        out[c] /= np.float32(cfg.std[c])


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


def preprocess_detection(image: ImageSource, cfg: PreprocessConfig, *, fast: bool = False) -> DetectionInput:
    """A PIL image, a path or encoded bytes -> a detector's input: the whole image resized (bilinear, as DETR's
    processor), normalised, placed top-left on the S x S canvas, and its mask (transformers' DetrImageProcessor with
    pad_size S x S gives the same arrays). `fast`: as `preprocess_image`'s, normalised straight onto the canvas."""
    import numpy as np
    from PIL import Image

    if not cfg.detection:
        raise ImageError("this is a classifier's preprocessing (a center crop), not a detector's")

    def output_size(w: int, h: int) -> tuple[int, int]:
        oh, ow = detection_size(h, w, cfg)
        return ow, oh

    decoded, (w, h) = _decode(image, output_size if fast else None)
    ow, oh = output_size(w, h)
    resized = _resize(decoded, (ow, oh), Image.Resampling.BILINEAR, fast=fast)
    S = cfg.input_size
    pixels = np.zeros((3, S, S), np.float32)
    if fast:
        _normalise_into(pixels[:, :oh, :ow], resized, cfg)
    else:
        pixels[:, :oh, :ow] = _normalised(resized, cfg).transpose(2, 0, 1)
    mask = np.zeros((S, S), np.int64)
    mask[:oh, :ow] = 1
    return DetectionInput(pixels, mask, (h, w))


def load_images(paths: list[str | Path], cfg: PreprocessConfig) -> np.ndarray:
    """A batch (N, 3, S, S) from image files."""
    import numpy as np

    return np.stack([preprocess_image(Path(p), cfg) for p in paths])
