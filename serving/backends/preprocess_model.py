"""Triton Python-backend preprocessing: encoded image bytes -> pixel_values, with vitexport's own
`preprocess_image`, so served images get exactly the pixels that the CLI and the accuracy gate use. For a detector
(the config's preprocessing has `shortest_edge`), `preprocess_detection` -> pixel_values, pixel_mask and the
original (height, width), in the order of the config's outputs. Each request is checked against the config's
`RequestLimits` (encoded bytes per image and per request, decoded pixels per request, from the images' headers)
before any of its images is decoded."""

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.errors import ImageError
from vitexport.preprocess import (
    PreprocessConfig,
    RequestLimits,
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

    def _tensors(self, images: np.ndarray) -> list[np.ndarray]:
        encoded = [bytes(row[0]) for row in images]
        check_request(encoded, self.limits)
        if not self.cfg.detection:
            return [np.stack([preprocess_image(b, self.cfg) for b in encoded])]
        inputs = [preprocess_detection(b, self.cfg) for b in encoded]
        return [
            np.stack([i.pixels for i in inputs]),
            np.stack([i.mask for i in inputs]),
            np.array([i.size for i in inputs], dtype=np.int64),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()  # (B, 1) object array of bytes
            try:
                if images.size == 0:
                    raise ImageError("no image in the request")
                tensors = self._tensors(images)
            except Exception as e:
                # Any failure fails this request only: raised out of execute, it would fail every request Triton
                # batched with it. The client's mistakes (undecodable, empty, over a size limit: ImageError) are
                # INVALID_ARG (HTTP 400); anything else is ours, named by type only (no paths or addresses).
                if isinstance(e, ImageError):
                    error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                else:
                    error = pb_utils.TritonError(f"cannot preprocess image: {type(e).__name__}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            outputs = [pb_utils.Tensor(name, t) for name, t in zip(self.output_names, tensors, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
