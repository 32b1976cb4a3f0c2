"""Decoding a user's image (a PIL image, a path, encoded bytes or an open file) into RGB, its size checked against the
limits before any pixel is allocated, and Pillow's errors turned into one line for a client."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

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

# The fast path's reduced-size decode (a JPEG's DCT scaling, 1/2 to 1/8) and box pre-reduction (Pillow's
# reducing_gap) stop at this many times the resize's output per side, so the final filter still sees at least two
# source pixels per output pixel (bicubic's support when downscaling 2x) and the result stays within the fast path's
# gate (the tasks' PREPROCESS_TOLERANCE). Measured in docs/benchmarks.md, "The image path: what was tried".
REDUCE_GAP = 2.0

if TYPE_CHECKING:  # Pillow is imported where it is used: the CLI imports this package for --help
    from typing import BinaryIO, TypeAlias

    from PIL import Image

    # What the preprocessing functions take: a PIL image, a path, encoded bytes or an open binary file.
    ImageSource: TypeAlias = Image.Image | str | Path | bytes | bytearray | BinaryIO


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
