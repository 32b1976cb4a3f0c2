"""Triton Python-backend top-k: logits -> the k best labels, their softmax scores and class indices.

The config (serving.config.postprocess_config) names the input it reads (`inputs`: the logits) and the outputs it
answers, in the order labels, scores, indices and (configs since the classification extension's `probabilities`) the
softmax of every class; `top_k` and the `labels` file are its parameters.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.k = int(params["top_k"])
        (self.logits,) = json.loads(params["inputs"])
        self.labels_out, self.scores_out, self.indices_out, *self.probs_out = (o["name"] for o in config["output"])
        labels = (Path(args["model_repository"]) / params["labels"]).read_text().splitlines()
        self.labels = np.array([label.encode() for label in labels], dtype=np.object_)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.logits).as_numpy().astype(np.float64)  # (B, C)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            top = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]  # (B, k), best first
            outputs = [
                pb_utils.Tensor(self.labels_out, self.labels[top]),  # the repository writes one label per class
                pb_utils.Tensor(self.scores_out, np.take_along_axis(probs, top, axis=1).astype(np.float32)),
                pb_utils.Tensor(self.indices_out, top.astype(np.int64)),
                *(pb_utils.Tensor(name, probs.astype(np.float32)) for name in self.probs_out),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
