"""`Client`: a running Triton server's address and protocol held once, for the client functions of
`vitexport.serving.client` (classify, embed, detect, the models ready). tritonclient is imported when a call is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport.serving import client as calls

if TYPE_CHECKING:
    import numpy as np

    from vitexport.postprocess import Detection
    from vitexport.serving.client import TopK

Image = str | Path | bytes  # a file path, or the encoded bytes of a JPEG, PNG, ...


@dataclass(frozen=True)
class Client:
    """A Triton server at `url` (HOST:PORT, such as `server.endpoints.http`) asked over `protocol` ("http" or
    "grpc"), each call waiting at most `timeout` seconds. Without `model`, a call asks the repository's one
    `<name>_image` ensemble. One connection per call: nothing to close. `send`: "resized" (a large photo made smaller
    before it is sent, where the model's gate allows it) or "original" (the file's bytes)."""

    url: str
    protocol: calls.Protocol | str = calls.Protocol.http
    timeout: float = calls.DEFAULT_TIMEOUT
    send: calls.Send | str = calls.Send.resized

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", calls.parse_protocol(self.protocol))
        object.__setattr__(self, "send", calls.parse_send(self.send))

    def classify(self, images: Sequence[Image], model: str | None = None, top_k: int | None = None) -> list[TopK]:
        """The `top_k` classes of each image, most likely first (`TopK`: labels, scores, indices); None: the
        repository's top-k (5 unless `repo --top-k` said otherwise)."""
        return calls.classify(
            self.url, images, protocol=self.protocol, model=model, top_k=top_k, timeout=self.timeout, send=self.send
        )

    def embed(self, images: Sequence[Image], model: str | None = None) -> list[np.ndarray]:
        """Each image's embedding (float32, (D,)), from a model exported with the features head."""
        return calls.embed(self.url, images, protocol=self.protocol, model=model, timeout=self.timeout, send=self.send)

    def detect(
        self,
        images: Sequence[Image],
        model: str | None = None,
        *,
        threshold: float | None = None,
        top_k: int | None = None,
    ) -> list[list[Detection]]:
        """A detector's objects in each image, most confident first, boxes in the image's pixels; `threshold` and
        `top_k` default to the repository's (0.5 and 100 unless set when it was written)."""
        return calls.detect(
            self.url,
            images,
            protocol=self.protocol,
            model=model,
            threshold=threshold,
            top_k=top_k,
            timeout=self.timeout,
            send=self.send,
        )

    def ready_models(self) -> list[str]:
        """The names of the models the server has loaded and ready."""
        return calls.ready_models(self.url, protocol=self.protocol, timeout=self.timeout)
