"""The fast image path beside the exact one: how a served ensemble preprocesses (`ServedPreprocessing`, chosen by the
fast path's gate when the repository is written), and a large photo made smaller before it is sent
(`reduce_for_sending`), in Pillow only. The fast decode and resize themselves are `preprocess_image(..., fast=True)`
(decode.py, transform.py)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from vitexport.preprocess.config import PreprocessConfig
from vitexport.preprocess.decode import REDUCE_GAP, _decode, _decode_errors, _open, _rgb
from vitexport.preprocess.transform import detection_size, resized_size


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
    return resized_size(width, height, cfg)


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
    options = {"quality": 95, "subsampling": "4:4:4"} if fmt == "JPEG" else {"compress_level": 1}
    resized.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def reduced_decode_size(image: bytes, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) of the pixels the fast path decodes this image to (its full size where no reduction applies):
    the fast path's own decode, run."""
    decoded, _ = _decode(image, lambda w, h: resize_target(w, h, cfg))
    return decoded.size
