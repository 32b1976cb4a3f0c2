"""Triton Python-backend preprocessing: encoded image bytes -> pixel_values, with vitexport's own
`preprocess_image`, so served images get exactly the pixels that the CLI and the accuracy gate use."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.errors import VitExportError
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
                pixels = np.stack([preprocess_image(bytes(row[0]), self.cfg) for row in images])
            except Exception as e:
                # Any failure (undecodable bytes, Pillow's DecompressionBombError, ...) fails this request only:
                # raised out of execute, it would fail every request Triton batched with it.
                message = (
                    str(e) if isinstance(e, VitExportError) else f"cannot preprocess image: {type(e).__name__}: {e}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)]))
        return responses
