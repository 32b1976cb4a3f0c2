"""Triton Python-backend preprocessing: encoded image bytes -> pixel_values, with vitexport's own
`preprocess_image`, so served images get exactly the pixels that the CLI and the accuracy gate use (with torch and
torchvision only where the config's resize_backend is torchvision: transformers' torchvision processors). For a
detector (the config's preprocessing has `shortest_edge`), `preprocess_detection` -> pixel_values, pixel_mask and the
original (height, width), in the order of the config's outputs. Each request is checked against the config's
`RequestLimits` (encoded bytes per image and per request, decoded pixels per request, from the images' headers)
before any of its images is decoded. The config's `preprocess_path` says which path: `fast` (a reduced-size decode of
a large JPEG, a box pre-reduction, written only where the fast path passed its gate for this model) or `exact`
(the reference; a repository written before the fast path existed)."""

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.errors import ImageError
from vitexport.preprocess import (
    PreprocessConfig,
    RequestLimits,
    ServedPreprocessing,
    check_request,
    preprocess_detection,
    preprocess_image,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.cfg = PreprocessConfig.from_dict(json.loads(config["parameters"]["preprocess"]["string_value"]))
        self.output_names = [o["name"] for o in config["output"]]
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.limits = RequestLimits.from_parameters(parameters)
        if self.cfg.resize_backend == "torchvision":
            # torch loads now, not on the first request (Pillow configs never load it); one thread, as Pillow's
            # resize: the parallelism is Triton's instances, and torch's pool would oversubscribe the cores
            from vitexport.preprocess import tv_backend

            tv_backend.load(threads=1)
        self.fast = ServedPreprocessing.from_parameters(parameters).fast

    def _admit(self, request: Any) -> tuple[int, list[bytes] | Exception]:
        """(pixels, the images) of a request within the limits, from the images' headers; (-1, the error) else."""
        try:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()  # (B, 1) object array of bytes
            if images.size == 0:
                raise ImageError("no image in the request")
            encoded = [bytes(row[0]) for row in images]
            return check_request(encoded, self.limits), encoded
        except Exception as e:
            # Without its traceback: its frames hold the request's bytes (1 GB, say) until execute has answered all.
            return -1, e.with_traceback(None)

    def _tensors(self, encoded: list[bytes]) -> list[np.ndarray]:
        if not self.cfg.detection:
            return [np.stack([preprocess_image(b, self.cfg, fast=self.fast) for b in encoded])]
        inputs = [preprocess_detection(b, self.cfg, fast=self.fast) for b in encoded]
        return [
            np.stack([i.pixels for i in inputs]),
            np.stack([i.mask for i in inputs]),
            np.array([i.size for i in inputs], dtype=np.int64),
        ]

    def _response(self, admitted: list[bytes] | Exception) -> Any:
        if isinstance(admitted, Exception):
            return self._error(admitted)
        try:
            tensors = self._tensors(admitted)
        except Exception as e:
            return self._error(e)
        outputs = [pb_utils.Tensor(name, t) for name, t in zip(self.output_names, tensors, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _error(self, e: Exception) -> Any:
        # Any failure fails this request only: raised out of execute, it would fail every request Triton batched with
        # it. The client's mistakes (undecodable, empty, over a size limit: ImageError) are INVALID_ARG (HTTP 400);
        # anything else is ours, named by type only (no paths or addresses).
        if isinstance(e, ImageError):
            error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
        else:
            error = pb_utils.TritonError(f"cannot preprocess image: {type(e).__name__}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def execute(self, requests: list[Any]) -> None:
        # Refused ones and the fewest pixels first, each answered as soon as it is done (a non-decoupled model may
        # send its one response through the request's sender and return None): a request Triton batched with heavy
        # ones waits for none of them, only for the one being decoded when it arrived.
        admitted = [self._admit(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: admitted[i][0])
        for i in order:
            sender = requests[i].get_response_sender()
            sender.send(self._response(admitted[i][1]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
