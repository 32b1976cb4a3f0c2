"""Image preprocessing: a model's config (registered with the model, recorded in every artifact) and the one function
that applies it, in numpy and Pillow only.

The CLI, the accuracy gate and the Triton ensemble's preprocessing model all call this one function, so a
served model sees exactly the pixels the reference saw.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitexport.errors import ImageError

# Bounds checked before any pixel is allocated. Decoded: 8K UHD is 33 MP. After the short-side resize: a 20000 x 1
# strip would become 5,120,000 x 256 pixels (5 GB of RGB floats in the resampler) from a 99-byte PNG.
MAX_IMAGE_PIXELS = 50_000_000
MAX_RESIZED_PIXELS = 16_777_216
# Bounds of one served request, checked before any of its images is decoded: the per-image ones alone let one request
# of 8 x 49 MP images hold the preprocessing for 10 s, or a JPEG with 1 GB appended through. A camera's JPEG with a
# video appended (a motion photo) decodes as the JPEG: trailing bytes are accepted within the bytes caps. The request
# cap is the validating front's body cap: a larger request would not reach Triton anyway.
MAX_IMAGE_BYTES = 32 * 2**20
MAX_REQUEST_BYTES = 64 * 2**20
MAX_REQUEST_PIXELS = 64_000_000

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports this module for --help
    from collections.abc import Sequence
    from typing import BinaryIO, TypeAlias

    import numpy as np
    from PIL import Image

    # What the preprocessing functions take: a PIL image, a path, encoded bytes or an open binary file.
    ImageSource: TypeAlias = Image.Image | str | Path | bytes | bytearray | BinaryIO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the ViT (AugReg) checkpoints normalise to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)

# The fast path's reduced-size decode (a JPEG's DCT scaling, 1/2 to 1/8) and box pre-reduction (Pillow's
# reducing_gap) stop at this many times the resize's output per side, so the final filter still sees at least two
# source pixels per output pixel (bicubic's support when downscaling 2x) and the result stays within the fast path's
# gate (the tasks' PREPROCESS budgets). Measured in docs/benchmarks.md, "The image path: what was tried".
REDUCE_GAP = 2.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input: resize the short side to input_size / crop_pct, center crop.

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

    @property
    def detection(self) -> bool:
        return self.shortest_edge is not None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }
        if self.detection:  # only then: classifiers' dicts stay what older vitexports wrote and read
            d |= {"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        edges = {k: None if d.get(k) is None else int(d[k]) for k in ("shortest_edge", "longest_edge")}
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            **edges,
        )


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
    """`out` (3, h, w) float32, a view of the model's input: image * (1 / (255 std)) - mean / std, per channel, with
    no float (h, w, 3) intermediate and no transpose copy."""
    import numpy as np

    pixels = np.asarray(image)  # (h, w, 3) uint8
    for c in range(3):
        np.multiply(pixels[..., c], 1.0 / (255.0 * cfg.std[c]), out=out[c], dtype=np.float32)
        out[c] -= np.float32(cfg.mean[c] / cfg.std[c])


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


def _decode(
    image: ImageSource, output_size: Callable[[int, int], tuple[int, int]] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """(a PIL RGB image, the image's full (width, height)) from a PIL image, a path or encoded bytes, its size
    checked before its pixels are decoded. With `output_size` ((w, h) -> the resize's output), a JPEG much larger
    than that is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling), never below REDUCE_GAP times the
    output: the geometry stays the full image's, only the pixels the final filter starts from are fewer."""
    from PIL import Image

    if isinstance(image, Image.Image):
        _check_pixels(*image.size)
        return _rgb(image), image.size
    with _decode_errors(isinstance(image, (bytes, bytearray))):
        opened = _open(image)
        full = opened.size
        if output_size is not None:
            ow, oh = output_size(*full)
            opened.draft("RGB", (math.ceil(ow * REDUCE_GAP), math.ceil(oh * REDUCE_GAP)))  # None for a non-JPEG
        opened.load()
    return _rgb(opened), full


def _rgb(image: Image.Image) -> Image.Image:
    """RGB without a copy when it already is: Pillow's convert to the same mode copies every pixel."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(image: str | Path | bytes | bytearray | BinaryIO) -> Image.Image:
    """Pillow's lazy open: the header only, so the size is known (and checked) before any pixel is decoded."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("empty image: 0 bytes")
        image = io.BytesIO(image)
    opened = Image.open(image)
    _check_pixels(*opened.size)
    return opened


@contextmanager
def _decode_errors(encoded: bool) -> Iterator[None]:
    """Pillow's errors as one line for a client: no stream objects, addresses or tracebacks."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as e:  # Pillow's own limit, met while reading the header
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(
            f"image is {pixels[1] if pixels else 'too many'} pixels, over the limit of {MAX_IMAGE_PIXELS}"
        ) from None
    except UnidentifiedImageError as e:
        # Pillow's message names the stream object (`<_io.BytesIO object at 0x...>`): not for a client.
        raise ImageError(
            "cannot decode image: not an image format Pillow reads" if encoded else f"cannot decode image: {e}"
        ) from None
    except OSError as e:
        raise ImageError(
            "cannot decode image: truncated or corrupt data" if encoded else f"cannot decode image: {e}"
        ) from None


def _check_pixels(w: int, h: int) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"image is {w} x {h} = {w * h} pixels, over the limit of {MAX_IMAGE_PIXELS}")
    if w < 1 or h < 1:
        raise ImageError(f"image is {w} x {h} pixels: nothing to classify")


@dataclass(frozen=True)
class RequestLimits:
    """What one served request may hold, checked by `check_request` before any of its images is decoded. The
    preprocessing model reads them from its config's parameters (`to_parameters`), which `repo` writes."""

    image_bytes: int = MAX_IMAGE_BYTES  # encoded, per image
    request_bytes: int = MAX_REQUEST_BYTES  # encoded, all the request's images
    request_pixels: int = MAX_REQUEST_PIXELS  # decoded, all the request's images (each also under MAX_IMAGE_PIXELS)

    def __post_init__(self) -> None:
        for name in ("image_bytes", "request_bytes", "request_pixels"):
            if getattr(self, name) < 1:
                raise ImageError(f"request limit {name} must be at least 1, not {getattr(self, name)}")

    def to_parameters(self) -> dict[str, str]:
        """The config parameters that carry the limits (string values, as Triton's parameters are)."""
        return {f"max_{name}": str(getattr(self, name)) for name in ("image_bytes", "request_bytes", "request_pixels")}

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> RequestLimits:
        """From `to_parameters`' keys; a repository written before the limits existed gets the defaults."""
        names = ("image_bytes", "request_bytes", "request_pixels")
        return cls(**{n: int(parameters[f"max_{n}"]) for n in names if f"max_{n}" in parameters})


def check_request(images: Sequence[bytes], limits: RequestLimits) -> int:
    """The pixels a request's images decode to, from their headers; ImageError (one line naming the limit) for a
    request whose images are too many bytes or would decode to too many pixels, before any of them is decoded."""
    total = 0
    for i, data in enumerate(images, 1):
        if len(data) > limits.image_bytes:
            raise ImageError(f"image {i} is {len(data)} bytes, over the limit of {limits.image_bytes} bytes per image")
        total += len(data)
    if total > limits.request_bytes:
        raise ImageError(
            f"the request's {len(images)} images are {total} bytes, over the limit of {limits.request_bytes} bytes "
            "per request"
        )
    pixels = 0
    for data in images:
        with _decode_errors(encoded=True):
            w, h = _open(data).size
        pixels += w * h
    if pixels > limits.request_pixels:
        raise ImageError(
            f"the request's {len(images)} images are {pixels} pixels decoded, over the limit of "
            f"{limits.request_pixels} pixels per request"
        )
    return pixels


def load_images(paths: list[str | Path], cfg: PreprocessConfig) -> np.ndarray:
    """A batch (N, 3, S, S) from image files."""
    import numpy as np

    return np.stack([preprocess_image(Path(p), cfg) for p in paths])


@dataclass(frozen=True)
class ServedPreprocessing:
    """How a served image ensemble preprocesses, chosen by the fast path's gate (`export.gate.preprocess_gate`) when
    the repository is written: `fast` (else the exact reference), whether clients may send a large photo resized
    (`send_resized`: `reduce_for_sending`), and the gate's figures that decided both. The preprocessing model reads
    it from its config's parameters; clients from the ensemble's."""

    fast: bool = False
    send_resized: bool = False
    gate: dict[str, Any] | None = None  # the figures: worst cosine, top-1 agreement, the photos, failures

    def to_parameters(self) -> dict[str, str]:
        import json

        return {
            "preprocess_path": "fast" if self.fast else "exact",
            "send": "resized" if self.send_resized else "original",
            "preprocess_gate": json.dumps(self.gate or {}, sort_keys=True),
        }

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> ServedPreprocessing:
        """From `to_parameters`' keys; a repository written before the fast path existed is exact."""
        import json

        gate = parameters.get("preprocess_gate")
        return cls(
            fast=parameters.get("preprocess_path") == "fast",
            send_resized=parameters.get("send") == "resized",
            gate=json.loads(gate) if gate else None,
        )


def resize_target(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) that the preprocessing resizes an image of this size to, before its crop or canvas."""
    if cfg.detection:
        oh, ow = detection_size(height, width, cfg)
        return ow, oh
    return _short_side_size(width, height, cfg)


def reduce_for_sending(data: bytes, cfg: PreprocessConfig) -> bytes:
    """A photo's bytes as worth sending to a model preprocessing with `cfg`: a JPEG or PNG more than twice
    REDUCE_GAP times the resize's output on both sides is resized (reduced decode, then Lanczos) to REDUCE_GAP times
    that output and re-encoded (JPEG quality 95; PNG as PNG); anything else is returned as given. The served fast path
    then has the pixels it would have decoded anyway (checked by the send gate, `preprocess_gate(sent=True)`).
    The boxes of a detector are in pixels of the image it was sent: the caller scales them back."""
    from PIL import Image

    with _decode_errors(encoded=True):
        opened = _open(data)
        if opened.format not in ("JPEG", "PNG"):
            return data
        w, h = opened.size
        ow, oh = resize_target(w, h, cfg)
        scale = max(REDUCE_GAP * ow / w, REDUCE_GAP * oh / h)
        if scale > 0.5:  # less than halving each side: the re-encode would save little and cost a generation
            return data
        size = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
        opened.draft("RGB", size)
        opened.load()
    fmt = opened.format
    resized = _rgb(opened).resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCE_GAP)
    buffer = io.BytesIO()
    resized.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def reduced_decode_size(data: bytes, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) the fast path decodes this image's pixels at (its full size where no reduction applies)."""
    with _decode_errors(encoded=True):
        opened = _open(data)
        ow, oh = resize_target(*opened.size, cfg)
        opened.draft("RGB", (math.ceil(ow * REDUCE_GAP), math.ceil(oh * REDUCE_GAP)))
    return opened.size
