"""Triton Python-backend preprocessing: encoded image bytes -> pixel_values, with vitexport's own
`preprocess_image`, so served images get exactly the pixels that the CLI and the accuracy gate use."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.errors import ImageError
from vitexport.preprocess import PreprocessConfig, preprocess_image


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.cfg = PreprocessConfig.from_dict(json.loads(config["parameters"]["preprocess"]["string_value"]))
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()  # (B, 1) object array of bytes
            try:
                if images.size == 0:
                    raise ImageError("no image in the request")
                pixels = np.stack([preprocess_image(bytes(row[0]), self.cfg) for row in images])
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
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)]))
        return responses
