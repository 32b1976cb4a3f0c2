"""Triton Python-backend post-processing of a classifier: logits -> the softmax of every class (`probabilities`).

The top k is Triton's: its classification extension ranks this labelled output (label_filename) into
"value:index:label" strings, k from the request's `class_count`, so only k strings cross the wire. The config
(serving.config.postprocess_config) names the input it reads (`inputs`: the logits) and the output it answers.
Repositories of vitexport 0.1 keep their own copy of this file (with the top-k outputs), not this one.
"""

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        (self.logits,) = json.loads(params["inputs"])
        (self.probabilities,) = (o["name"] for o in config["output"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.logits).as_numpy().astype(np.float64)  # (B, C)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            output = pb_utils.Tensor(self.probabilities, probs.astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
