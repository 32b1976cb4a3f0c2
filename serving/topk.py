"""Classes from a served model, ranked by Triton's classification extension: the image ensemble's labelled
`probabilities` asked for the top k (only k "value:index:label" strings cross the wire), or a plain model's logits
(every class, softmax computed here); an image ensemble of vitexport 0.1 answers its own top-k outputs, read as
they are. And what a plain model needs of the client: the images preprocessed as its config says."""

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
from vitexport.tasks.classification import DEFAULT_TOP_K, TOP_K_INDICES, TOP_K_LABELS, TOP_K_SCORES

TOP_K = "top_k"  # the setting the repository wrote on the image ensemble: the client's default k


@dataclass(frozen=True)
class TopK:
    """One image's best classes, best first; scores are softmax probabilities."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    indices: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "scores": list(self.scores), "indices": list(self.indices)}


def default_top_k(config: cfg.pb.ModelConfig) -> int:
    """How many classes a client asks by default: the image ensemble's top_k (what `repo --top-k` wrote), the width
    of a vitexport 0.1 ensemble's top-k outputs, else 5 (at most the classes of a plain model)."""
    written = cfg.parameter(config, TOP_K)
    if written is not None:
        return int(written)
    outputs = {o.name: o for o in config.output}
    if TOP_K_LABELS in outputs:
        return int(outputs[TOP_K_LABELS].dims[-1])
    return min(DEFAULT_TOP_K, int(config.output[0].dims[-1])) if config.output else DEFAULT_TOP_K


def classify_ensemble(
    url: str, model: str, config: cfg.pb.ModelConfig, data: list[bytes], protocol: Protocol, top_k: int, timeout: float
) -> list[TopK]:
    """The top k of each image from an image ensemble: its labelled output (the probabilities) ranked by Triton."""
    images = np.array([[d] for d in data], dtype=np.object_)  # (B, 1): one encoded image per row
    if TOP_K_LABELS in {o.name for o in config.output}:
        return _top_k_outputs(url, model, config, images, protocol, top_k, timeout)
    labelled = [o for o in config.output if o.label_filename]
    if not labelled:
        raise ServingError(f"{model} has no labelled output to rank classes on; was it written by `vitexport repo`?")
    output = labelled[0]
    _check_k(model, top_k, int(output.dims[-1]))
    rows = ranked(url, model, {IMAGE_INPUT: images}, output.name, top_k, protocol, timeout)
    return [TopK(tuple(e.label for e in row), tuple(e.value for e in row), tuple(e.index for e in row)) for row in rows]


def _top_k_outputs(
    url: str, model: str, config: cfg.pb.ModelConfig, images: np.ndarray, protocol: Protocol, top_k: int, timeout: float
) -> list[TopK]:
    """A vitexport 0.1 ensemble's answer: its labels, scores and indices outputs, the top k it was written with."""
    served_k = default_top_k(config)
    if top_k > served_k:
        raise ServingError(f"{model} returns the top {served_k}; ask for --top-k {served_k} or fewer")
    names = [TOP_K_LABELS, TOP_K_SCORES, TOP_K_INDICES]
    labels, scores, indices = infer(url, model, {IMAGE_INPUT: images}, names, protocol=protocol, timeout=timeout)
    return [
        TopK(
            tuple(text(x) for x in labels[i, :top_k]),
            tuple(float(x) for x in scores[i, :top_k]),
            tuple(int(x) for x in indices[i, :top_k]),
        )
        for i in range(len(images))
    ]


@dataclass(frozen=True)
class Ranked:
    """One class as Triton's classification extension answers it: "value:index:label" (the label where the output
    has a label file)."""

    value: float
    index: int
    label: str

    @classmethod
    def parse(cls, entry: Any) -> Ranked:
        value, index, *label = text(entry).split(":", 2)  # a label may hold colons itself
        return cls(float(value), int(index), label[0] if label else index)


def ranked(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    output: str,
    count: int,
    protocol: Protocol,
    timeout: float,
) -> list[list[Ranked]]:
    """One request asking Triton's classification extension for `count` classes of `output`: each row's classes,
    best first. Values come as Triton prints them (six decimals)."""
    from tritonclient.utils import np_to_triton_dtype

    with connection(url, protocol, timeout=timeout) as (client, module):
        tensors = []
        for name, array in inputs.items():
            tensors.append(module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
            tensors[-1].set_data_from_numpy(array)
        requested = module.InferRequestedOutput(output, class_count=count)
        options = call_options(protocol, timeout)
        result = call(
            f"{model} refused the request", timeout, client.infer, model, tensors, outputs=[requested], **options
        )
    batch = len(next(iter(inputs.values())))
    rows = result.as_numpy(output).reshape(batch, -1)
    return [[Ranked.parse(x) for x in row] for row in rows]


def _check_k(model: str, top_k: int, num_classes: int) -> None:
    if top_k > num_classes:
        raise ServingError(f"{model} has {num_classes} classes; ask for --top-k {num_classes} or fewer")


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
    num_classes = int(output.dims[-1])
    _check_k(model, top_k, num_classes)
    # All classes through the classification extension: labels and logits in one reply, softmax computed here.
    rows = ranked(url, model, {config.input[0].name: pixels}, output.name, num_classes, protocol, timeout)
    results = []
    for row in rows:
        logits = np.array([e.value for e in row])
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = row[:top_k]
        results.append(
            TopK(tuple(e.label for e in best), tuple(float(p) for p in probs[:top_k]), tuple(e.index for e in best))
        )
    return results


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
