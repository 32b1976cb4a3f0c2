"""Classes from a served model: the image ensemble's top-k outputs, or a plain model's logits through Triton's
classification extension (its "value:index:label" strings, softmax computed here); and what a plain model needs of
the client: the images preprocessed as its config says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitexport.errors import ServingError, VitExportError
from vitexport.preprocess import PreprocessConfig
from vitexport.serving import config as cfg
from vitexport.serving.calls import Protocol, call, call_options, connection, infer
from vitexport.tasks.base import IMAGE_INPUT
from vitexport.tasks.classification import TOP_K_INDICES, TOP_K_LABELS, TOP_K_SCORES


@dataclass(frozen=True)
class TopK:
    """One image's best classes, best first; scores are softmax probabilities."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    indices: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "scores": list(self.scores), "indices": list(self.indices)}


def classify_ensemble(
    url: str, model: str, config: cfg.pb.ModelConfig, data: list[bytes], protocol: Protocol, top_k: int, timeout: float
) -> list[TopK]:
    served_k = config.output[0].dims[-1] if config.output else 0
    if top_k > served_k:
        raise ServingError(f"{model} returns the top {served_k}; ask for --top-k {served_k} or fewer")
    images = np.array([[d] for d in data], dtype=np.object_)  # (B, 1): one encoded image per row
    labels, scores, indices = infer(
        url,
        model,
        {IMAGE_INPUT: images},
        [TOP_K_LABELS, TOP_K_SCORES, TOP_K_INDICES],
        protocol=protocol,
        timeout=timeout,
    )
    return [
        TopK(
            tuple(text(x) for x in labels[i, :top_k]),
            tuple(float(x) for x in scores[i, :top_k]),
            tuple(int(x) for x in indices[i, :top_k]),
        )
        for i in range(len(data))
    ]


def preprocess_config(model: str, config: cfg.pb.ModelConfig) -> PreprocessConfig:
    """How a plain model (pixels in) wants its images: the repository writes it into the model's parameters."""
    raw = cfg.parameter(config, "vitexport_preprocess")
    if raw is None:
        raise ServingError(f"{model} has no vitexport_preprocess parameter; was it written by `vitexport repo`?")
    return PreprocessConfig.from_dict(json.loads(raw))


def preprocessed(data: list[bytes], preprocess: PreprocessConfig) -> np.ndarray:
    from vitexport.preprocess import preprocess_image

    try:
        return np.stack([preprocess_image(d, preprocess) for d in data])
    except VitExportError as e:
        raise ServingError(str(e)) from None


def classify_pixels(
    url: str, model: str, config: cfg.pb.ModelConfig, data: list[bytes], protocol: Protocol, top_k: int, timeout: float
) -> list[TopK]:
    if config.max_batch_size == 0 and config.input[0].dims[0] != 1:
        # Triton's classification extension ranks a whole unbatched output tensor, not each row of it.
        raise ServingError(f"{model} has a fixed batch of {config.input[0].dims[0]}; classify with its _image ensemble")
    pixels = preprocessed(data, preprocess_config(model, config))
    output = config.output[0]
    num_classes = output.dims[-1]
    if top_k > num_classes:
        raise ServingError(f"{model} has {num_classes} classes; ask for --top-k {num_classes} or fewer")
    # All classes through the classification extension: labels and logits in one reply, softmax computed here.
    with connection(url, protocol, timeout=timeout) as (client, module):
        tensor = module.InferInput(config.input[0].name, list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        requested = module.InferRequestedOutput(output.name, class_count=num_classes)
        options = call_options(protocol, timeout)
        what = f"{model} refused the request"
        result = call(what, timeout, client.infer, model, [tensor], outputs=[requested], **options)
    rows = result.as_numpy(output.name).reshape(len(pixels), num_classes)
    results = []
    for row in rows:
        entries = [text(x).split(":", 2) for x in row]  # "value:index[:label]", best first
        logits = np.array([float(e[0]) for e in entries])
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = entries[:top_k]
        results.append(
            TopK(
                tuple(e[2] if len(e) > 2 else e[1] for e in best),
                tuple(float(p) for p in probs[:top_k]),
                tuple(int(e[1]) for e in best),
            )
        )
    return results


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
