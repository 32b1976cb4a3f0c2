"""Triton Python-backend detection post-processing: a DETR's logits and pred_boxes and the original image size ->
boxes (x0, y0, x1, y1 in the original pixels), scores, labels, classes and count, by vitexport's own
`vitexport.postprocess.detections`, so the server answers what the CLI computes in process.

A request's parameters `threshold` (a score in [0, 1)) and `top_k` (>= 1) override the config's defaults; the
ensemble forwards its request's parameters to this step. Images hold different numbers of detections: each
response is as wide as the most detections of an image in its request, the other rows padded (box 0, score 0,
class -1, label ""), and `count` (B, 1) says how many rows of each image are real.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.postprocess import detections


class BadRequest(ValueError):
    """The client's mistake: INVALID_ARG (HTTP 400), failing its own request only."""


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.threshold = float(params["threshold"])
        self.top_k = int(params["top_k"])
        self.logits, self.boxes, self.size = json.loads(params["inputs"])
        self.output_names = [o["name"] for o in config["output"]]
        self.labels = (Path(args["model_repository"]) / params["labels"]).read_text().splitlines()

    def _settings(self, request: Any) -> tuple[float, int]:
        params = json.loads(request.parameters() or "{}")
        threshold, top_k = params.get("threshold", self.threshold), params.get("top_k", self.top_k)
        # bool is an int to Python: refused like any other non-number.
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise BadRequest(f"parameter threshold must be a number in [0, 1), not {threshold!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise BadRequest(f"parameter top_k must be an integer >= 1, not {top_k!r}")
        return float(threshold), top_k

    def _answer(self, request: Any) -> list[Any]:
        threshold, top_k = self._settings(request)
        logits = pb_utils.get_input_tensor_by_name(request, self.logits).as_numpy()  # (B, Q, C + 1)
        boxes = pb_utils.get_input_tensor_by_name(request, self.boxes).as_numpy()  # (B, Q, 4)
        sizes = pb_utils.get_input_tensor_by_name(request, self.size).as_numpy()  # (B, 2): height, width
        found = [
            detections(scores, xywh, (int(h), int(w)), threshold=threshold, top_k=top_k, labels=self.labels)
            for scores, xywh, (h, w) in zip(logits, boxes, sizes, strict=True)
        ]
        width = max(len(f) for f in found)
        out_boxes = np.zeros((len(found), width, 4), np.float32)
        scores = np.zeros((len(found), width), np.float32)
        classes = np.full((len(found), width), -1, np.int64)
        labels = np.full((len(found), width), b"", dtype=np.object_)
        for i, image in enumerate(found):
            for j, d in enumerate(image):
                out_boxes[i, j], scores[i, j], classes[i, j], labels[i, j] = (
                    d.box,
                    d.score,
                    d.class_index,
                    d.label.encode(),
                )
        count = np.array([[len(f)] for f in found], np.int64)
        answers = (out_boxes, scores, labels, classes, count)
        return [pb_utils.Tensor(name, a) for name, a in zip(self.output_names, answers, strict=True)]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._answer(request)))
            except Exception as e:  # this request fails, not the others Triton batched with it
                if isinstance(e, BadRequest):
                    error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                else:
                    error = pb_utils.TritonError(f"cannot post-process detections: {type(e).__name__}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
