"""The bounds of one served request (RequestLimits), checked from the images' headers before any is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitexport.errors import ImageError
from vitexport.preprocess.decode import (
    MAX_IMAGE_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_PIXELS,
    _decode_errors,
    _open,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


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
