"""What a client sends: a large photo resized before it goes on the wire, where the model's image ensemble allows it.

`repo` gates it for each model (`preprocess_gate(sent=True)`: photos resized to REDUCE_GAP times the model's resize,
re-encoded, then preprocessed fast, against the exact preprocessing of the originals) and writes the verdict into
the ensemble's config (`send`: resized or original) beside the preprocessing; the client reads both from the config
it fetches anyway. A 12 MP phone photo of 1 MB becomes ~0.1-0.2 MB for a 224 px classifier. A detector's boxes come
back in the pixels of the image sent, so they are scaled back to the original's here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from vitexport.errors import ServingError, VitExportError
from vitexport.preprocess import PreprocessConfig, reduce_for_sending

if TYPE_CHECKING:
    from vitexport.serving.config import pb


class Send(str, Enum):
    """`--send`: resized (a large photo made smaller first, where the model's gate allows it) or original."""

    resized = "resized"
    original = "original"


def parse_send(value: Send | str) -> Send:
    try:
        return Send(value)
    except ValueError:
        raise ServingError(f"send must be resized or original, not {value!r}") from None


@dataclass(frozen=True)
class Sent:
    """The images as sent, and for each the factors (x, y) from its pixels back to the original's."""

    data: list[bytes]
    scales: list[tuple[float, float]]

    @property
    def resized(self) -> bool:
        return any(s != (1.0, 1.0) for s in self.scales)


def prepare_for_sending(data: bytes, cfg: PreprocessConfig) -> bytes:
    """A photo's bytes as a client sends them to a model preprocessing with `cfg`: a JPEG or PNG much larger than the
    model's resize is resized to REDUCE_GAP times it (JPEG quality 95, 4:4:4; PNG as PNG); anything else, or bytes
    that do not decode, as given (the server answers those)."""
    try:
        return reduce_for_sending(data, cfg)
    except VitExportError:
        return data


def for_sending(config: pb.ModelConfig, data: list[bytes], send: Send | str) -> Sent:
    """The images to send to the served model of `config`: resized where `send` is resized and the model's ensemble
    says its gate allows it (`send: resized` in its config), else as given."""
    from vitexport.serving.config import parameter

    unchanged = Sent(data, [(1.0, 1.0)] * len(data))
    raw = parameter(config, "vitexport_preprocess")
    if parse_send(send) is Send.original or parameter(config, "send") != "resized" or raw is None:
        return unchanged
    cfg = PreprocessConfig.from_dict(json.loads(raw))
    sent = [prepare_for_sending(d, cfg) for d in data]
    return Sent(sent, [_scale(d, s) for d, s in zip(data, sent, strict=True)])


def _scale(original: bytes, sent: bytes) -> tuple[float, float]:
    if sent is original:
        return 1.0, 1.0
    import io

    from PIL import Image

    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(sent)) as b:
        return a.size[0] / b.size[0], a.size[1] / b.size[1]
