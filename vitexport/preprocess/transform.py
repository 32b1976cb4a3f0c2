"""The one function that applies a PreprocessConfig (a classifier's resize and centre crop, a detector's resize onto a
padded canvas), in numpy and Pillow only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport.errors import ImageError
from vitexport.preprocess.config import DEFAULT_RESCALE, INTERPOLATIONS, PreprocessConfig
from vitexport.preprocess.decode import MAX_RESIZED_PIXELS, REDUCE_GAP, _decode

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports this package for --help
    import numpy as np
    from PIL import Image

    from vitexport.preprocess.decode import ImageSource


def _resample(name: str) -> int:
    """Pillow's filter number for an interpolation name (config.INTERPOLATIONS is in Pillow's order)."""
    return INTERPOLATIONS.index(name)


def preprocess_image(image: ImageSource, cfg: PreprocessConfig, *, fast: bool = False) -> np.ndarray:
    """A PIL image, a path or encoded bytes -> float32 (3, S, S): the config's resize (by default the short side to
    S / crop_pct), centre crop S x S, rescale, normalise by mean/std, channel order. With the defaults that is timm's
    and torchvision's eval transform; `hf.from_hf_processor` configs give transformers' image processors' pixels.

    `fast`: a large JPEG is decoded at a reduced size (no smaller than REDUCE_GAP times the resize's output) and a
    large image box-reduced to that before the final filter, and the pixels normalised straight into the (3, S, S)
    array; the default, exact path is the reference it is gated against (`export.gate.preprocess_gate`). A
    torchvision config has no fast path: its pixels are torchvision's resize of the whole image."""
    if cfg.detection:  # a center crop would cut objects off and no mask would say where the image is
        raise ImageError("this is a detector's preprocessing (resize onto a padded canvas), not a classifier's crop")
    fast = fast and cfg.resize_backend == "pil"
    decoded, (w, h) = _decode(image, (lambda w, h: resized_size(w, h, cfg)) if fast else None)
    new_w, new_h = resized_size(w, h, cfg)
    if cfg.resize_backend == "torchvision":  # torch is imported for these configs only
        from vitexport.preprocess import tv_backend

        return tv_backend.pixels(decoded, (new_w, new_h), crop_box(new_w, new_h, cfg) if cfg.crop else None, cfg)
    resized = _resize(decoded, (new_w, new_h), _resample(cfg.interpolation), fast=fast)
    cropped = resized.crop(crop_box(new_w, new_h, cfg)) if cfg.crop else resized
    import numpy as np

    if fast:
        out = np.empty((3, cfg.input_size, cfg.input_size), np.float32)
        _normalise_into(out, cropped, cfg)
        return out
    return np.ascontiguousarray(_normalised(cropped, cfg).transpose(2, 0, 1))  # -> (3, S, S)


def _resize(image: Image.Image, size: tuple[int, int], resample: int, *, fast: bool) -> Image.Image:
    """The final filter; fast: after a box reduction by whole factors down to REDUCE_GAP times `size` (Pillow's
    reducing_gap: a 12 MP PNG is resized from ~1/5 of its pixels)."""
    if image.size == size:
        return image
    return image.resize(size, resample, reducing_gap=REDUCE_GAP if fast else None)


def _normalise_into(out: np.ndarray, image: Image.Image, cfg: PreprocessConfig) -> None:
    """`out` (3, h, w) float32, a view of the model's input, set to x * rescale, (x - mean) / std, in the config's
    channel order, channel by channel in place: no float (h, w, 3) intermediate and no transpose copy, and the same
    float32 arithmetic as `_normalised`, so the fast path's pixels are the exact path's wherever nothing was reduced."""
    import numpy as np

    pixels = np.asarray(image)  # (h, w, 3) uint8
    for c in range(3):
        k = 2 - c if cfg.channel_order == "BGR" else c  # the RGB channel normalised into out[c]
        if cfg.rescale == DEFAULT_RESCALE:  # divides, as `_normalised` does (bit for bit the same pixels)
            np.divide(pixels[..., k], np.float32(255.0), out=out[c], dtype=np.float32)
        else:
            np.multiply(pixels[..., k], np.float32(cfg.rescale), out=out[c], dtype=np.float32)
        out[c] -= np.float32(cfg.mean[k])
        out[c] /= np.float32(cfg.std[k])


def resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) of a classifier's resize of a width x height image; ImageError past MAX_RESIZED_PIXELS."""
    short = cfg.resize_short
    if short is None:  # a fixed (height, width): transformers' size {"height", "width"}
        assert isinstance(cfg.resize, tuple)
        new_w, new_h = cfg.resize[1], cfg.resize[0]
    else:  # short side to `short`, long side in proportion, truncated (torchvision's Resize(int), transformers'
        # get_resize_output_image_size alike)
        new_w, new_h = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image {width} x {height} would be resized to {new_w} x {new_h}, over the limit of {MAX_RESIZED_PIXELS} "
            "pixels (an aspect ratio this extreme is not a photograph)"
        )
    return new_w, new_h


def crop_box(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the S x S centre crop of a width x height resized image, its offsets rounded as
    the config says (timm rounds half to even, transformers' Pillow processors floor, its torchvision ones truncate)."""
    size = cfg.input_size
    if cfg.crop_rounding == "floor":
        left, top = (width - size) // 2, (height - size) // 2
    elif cfg.crop_rounding == "trunc":
        left, top = int((width - size) / 2), int((height - size) / 2)
    else:
        left, top = round((width - size) / 2), round((height - size) / 2)
    return left, top, left + size, top + size


def _normalised(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """(H, W, 3) float32: x * rescale, then (x - mean) / std, then the channel order."""
    import numpy as np

    raw = np.asarray(image, dtype=np.float32)
    # The default divides, as every release before the rescale factor existed did (bit for bit the same pixels).
    x = raw / 255.0 if cfg.rescale == DEFAULT_RESCALE else raw * np.float32(cfg.rescale)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return x[..., ::-1] if cfg.channel_order == "BGR" else x


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
    """A PIL image, a path or encoded bytes -> a detector's input: the whole image resized (the config's filter:
    bilinear, as DETR's processor), rescaled, normalised, placed top-left on the S x S canvas, and its mask
    (transformers' DetrImageProcessor with pad_size S x S gives the same arrays). `fast`: as `preprocess_image`'s,
    normalised straight onto the canvas."""
    import numpy as np

    if not cfg.detection:
        raise ImageError("this is a classifier's preprocessing (a center crop), not a detector's")
    fast = fast and cfg.resize_backend == "pil"

    def output_size(w: int, h: int) -> tuple[int, int]:
        oh, ow = detection_size(h, w, cfg)
        return ow, oh

    decoded, (w, h) = _decode(image, output_size if fast else None)
    ow, oh = output_size(w, h)
    if cfg.resize_backend == "torchvision":  # torch is imported for these configs only
        from vitexport.preprocess import tv_backend

        return DetectionInput(*tv_backend.detection_canvas(decoded, (ow, oh), cfg), (h, w))
    resized = _resize(decoded, (ow, oh), _resample(cfg.interpolation), fast=fast)
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
