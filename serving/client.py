"""Ask a running Triton server what its models answer for images: classes (`classify`), embeddings (`embed`) or
detections (`detect`), or whichever the model gives (`predict`, the CLI's `infer`). A served model's task is its
config's (`vitexport_task`, read through serving.config.task_of_config), never its name; asking a model for what
its task does not answer is one line.

Two kinds of served model are handled: the `<name>_image` ensemble (encoded bytes in, the task's answer out) and a
plain model (pixels in): for the latter the images are preprocessed here, following the preprocessing config the
repository wrote into the model's parameters. A classifier's top k is Triton's classification extension's in both
(on the ensemble's labelled probabilities, or the plain model's logits). A detector's threshold and top-k go with
the request as parameters, to its `_image` ensemble. Connections and calls are serving/calls.py's; their names are
importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.errors import ServingError
from vitexport.fileio import read_user_file
from vitexport.postprocess import Detection, box, check_settings
from vitexport.serving import config as cfg
from vitexport.serving.calls import (
    DEFAULT_TIMEOUT,
    Protocol,
    call_options,
    connect,
    connection,
    infer,
    model_config,
    parse_protocol,
    read_metrics,
    ready_models,
)
from vitexport.serving.sending import Send, for_sending, parse_send, prepare_for_sending
from vitexport.serving.topk import (
    TopK,
    classify_ensemble,
    classify_pixels,
    default_top_k,
    preprocess_config,
    preprocessed,
    text,
)
from vitexport.tasks import CLASSIFICATION, DETECTION, FEATURES, Task
from vitexport.tasks.base import IMAGE_INPUT
from vitexport.tasks.classification import EMBEDDINGS
from vitexport.tasks.detection import DETECTION_OUTPUTS

__all__ = [
    "DEFAULT_TIMEOUT",
    "Protocol",
    "Send",
    "TopK",
    "call_options",
    "classify",
    "connect",
    "connection",
    "detect",
    "embed",
    "infer",
    "model_config",
    "parse_protocol",
    "parse_send",
    "predict",
    "prepare_for_sending",
    "read_metrics",
    "ready_models",
]


def classify(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    top_k: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    send: Send | str = Send.resized,
) -> list[TopK]:
    """Top-k classes for each image (file paths or encoded bytes), in one batched request; each call to the server
    waits at most `timeout` seconds. `top_k` None: the repository's (`repo --top-k`, 5 unless set). `send`: a large
    photo goes resized where the model's gate allows (`resized`, serving/sending.py) or as the file's bytes
    (`original`)."""
    protocol, data = _check_request(protocol, images, timeout)
    if top_k is not None:
        _check_top_k(top_k)
    model, config = _served(url, model, protocol, timeout, CLASSIFICATION)
    data = for_sending(config, data, send).data
    return _classify(url, model, config, data, protocol, timeout, top_k=top_k)


def embed(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    send: Send | str = Send.resized,
) -> list[np.ndarray]:
    """The embedding (float32, (D,)) of each image (file paths or encoded bytes) from a model exported with
    `--head features`: its `_image` ensemble, or the model itself with the images preprocessed here. The vectors
    are the model's raw output, not normalised. `send`: as `classify`'s."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout, FEATURES)
    return _embed(url, model, config, for_sending(config, data, send).data, protocol, timeout)


def detect(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    threshold: float | None = None,
    top_k: int | None = None,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    send: Send | str = Send.resized,
) -> list[list[Detection]]:
    """The objects a detector's `_image` ensemble finds in each image (file paths or encoded bytes), most confident
    first, boxes (x0, y0, x1, y1) in the image's own pixels (of the original, also when it was sent resized: `send`,
    as `classify`'s). `threshold` and `top_k` go with the request (None: the repository's defaults, 0.5 and 100
    unless `repo` was told otherwise)."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout, DETECTION)
    sent = for_sending(config, data, send)
    return _detect(
        url, model, config, sent.data, protocol, timeout, threshold=threshold, top_k=top_k, scales=sent.scales
    )


def predict(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    send: Send | str = Send.resized,
) -> list[TopK] | list[np.ndarray] | list[list[Detection]]:
    """What the served model answers for each image, as its task says: its top-k classes (`classify`), its
    embedding (`embed`), or its detections (`detect`). `top_k` applies to classes and detections (default: the
    repository's, 5 classes or 100 detections unless set), `threshold` only to a task whose post-processing takes
    one. What `vitexport infer` shows. `send`: as `classify`'s."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout)
    task = cfg.task_of_config(config)
    if threshold is not None and "threshold" not in cfg.settings_of(task):
        raise ServingError(f"{model} is not a detector: a score threshold is for detectors")
    sent = for_sending(config, data, send)
    run = _answer(task).run
    return run(url, model, config, sent.data, protocol, timeout, top_k=top_k, threshold=threshold, scales=sent.scales)


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ServingError(f"top-k must be >= 1, got {top_k}")


def _classify(
    url: str,
    model: str,
    config: cfg.pb.ModelConfig,
    data: list[bytes],
    protocol: Protocol,
    timeout: float,
    *,
    top_k: int | None = None,
    **_: Any,
) -> list[TopK]:
    top_k = default_top_k(config) if top_k is None else top_k
    _check_top_k(top_k)
    run = classify_ensemble if _is_ensemble_input(config) else classify_pixels
    # More images than the model's max batch go as several requests; a fixed-batch model takes one at a time.
    step = config.max_batch_size or 1
    return [
        r
        for i in range(0, len(data), step)
        for r in run(url, model, config, data[i : i + step], protocol, top_k, timeout)
    ]


def _embed(
    url: str, model: str, config: cfg.pb.ModelConfig, data: list[bytes], protocol: Protocol, timeout: float, **_: Any
) -> list[np.ndarray]:
    ensemble = _is_ensemble_input(config)
    # A fixed-batch model (max_batch_size 0, the batch in its dims) takes exactly that batch: the last request is
    # filled up with zero images, whose rows are dropped (each image's embedding depends on that image alone).
    fixed = None if ensemble or config.max_batch_size else config.input[0].dims[0]
    preprocess = None if ensemble else preprocess_config(model, config)
    step = fixed or config.max_batch_size  # more images than a batch go as several requests
    vectors: list[np.ndarray] = []
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        if preprocess is None:
            inputs = {IMAGE_INPUT: np.array([[d] for d in chunk], dtype=np.object_)}  # (B, 1) encoded images
        else:
            pixels = preprocessed(chunk, preprocess)
            if fixed and len(chunk) < fixed:
                pixels = np.concatenate([pixels, np.zeros((fixed - len(chunk), *pixels.shape[1:]), np.float32)])
            inputs = {config.input[0].name: pixels}
        (out,) = infer(url, model, inputs, [EMBEDDINGS], protocol=protocol, timeout=timeout)
        rows = np.asarray(out, dtype=np.float32).reshape(-1, out.shape[-1])  # (B, D); a fixed batch's padding too
        vectors += list(rows[: len(chunk)])
    return vectors


def _detect(
    url: str,
    model: str,
    config: cfg.pb.ModelConfig,
    data: list[bytes],
    protocol: Protocol,
    timeout: float,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    scales: Sequence[tuple[float, float]] | None = None,
) -> list[list[Detection]]:
    if not _is_ensemble_input(config):  # the plain model's answer needs the post-processing's labels and settings
        raise ServingError(f"{model} takes pixels and a mask: detect with its _image ensemble")
    try:
        check_settings(threshold, top_k)
    except ValueError as e:
        raise ServingError(str(e)) from None
    parameters = {k: v for k, v in (("threshold", threshold), ("top_k", top_k)) if v is not None}
    found: list[list[Detection]] = []
    step = config.max_batch_size or 1  # more images than the ensemble's max batch go as several requests
    for i in range(0, len(data), step):
        images = np.array([[d] for d in data[i : i + step]], dtype=np.object_)  # (B, 1): one encoded image a row
        boxes, scores, labels, classes, count = infer(
            url,
            model,
            {IMAGE_INPUT: images},
            DETECTION_OUTPUTS,
            protocol=protocol,
            timeout=timeout,
            parameters=parameters,
        )
        for b in range(len(images)):
            rows = range(int(count[b, 0]))  # the rows after these are padding: another image had more detections
            sx, sy = scales[i + b] if scales else (1.0, 1.0)  # an image sent resized: back to the original's pixels
            found.append(
                [
                    Detection(
                        box(boxes[b, j] * np.array([sx, sy, sx, sy])),
                        float(scores[b, j]),
                        int(classes[b, j]),
                        text(labels[b, j]),
                    )
                    for j in rows
                ]
            )
    return found


@dataclass(frozen=True)
class _Answer:
    """What the client asks a model of a task: `run(url, model, config, data, protocol, timeout, top_k=,
    threshold=)`, named for messages by what it answers and the function that asks for it."""

    what: str
    ask: str
    run: Callable[..., list]


ANSWERS: dict[Task, _Answer] = {
    CLASSIFICATION: _Answer("classes", "classify", _classify),
    FEATURES: _Answer("embeddings", "embed", _embed),
    DETECTION: _Answer("detections", "detect", _detect),
}


def _answer(task: Task) -> _Answer:
    if task not in ANSWERS:
        raise ServingError(f"the client does not read the answers of {task.name} models")
    return ANSWERS[task]


def _check_request(
    protocol: Protocol | str, images: Sequence[str | Path | bytes], timeout: float
) -> tuple[Protocol, list[bytes]]:
    protocol = parse_protocol(protocol)
    if not images:
        raise ServingError("no images given")
    if not timeout > 0:
        raise ServingError(f"timeout must be > 0 seconds, got {timeout}")
    return protocol, [_read(image) for image in images]


def _served(
    url: str, model: str | None, protocol: Protocol, timeout: float, task: Task | None = None
) -> tuple[str, cfg.pb.ModelConfig]:
    """The model asked (by default the server's one `_image` ensemble) and its config; where the caller asks for
    one task's answer, a model of another task is refused in one line."""
    model = model or _default_model(url, protocol, timeout)
    config = model_config(url, model, protocol=protocol, timeout=timeout)
    served = cfg.task_of_config(config)
    if task is not None and served is not task:
        got, want = _answer(served), _answer(task)
        raise ServingError(f"{model} returns {got.what}, not {want.what}: use {got.ask}() or `vitexport infer`")
    return model, config


def _is_ensemble_input(config: cfg.pb.ModelConfig) -> bool:
    return bool(config.input) and config.input[0].data_type == cfg.pb.TYPE_STRING


MAX_IMAGE_BYTES = 128 << 20  # an encoded image file: 50 MP (the server's decoded limit) even as an uncompressed PNG


def _read(image: str | Path | bytes) -> bytes:
    """An image file's bytes, at most MAX_IMAGE_BYTES of them read: a regular file only (a FIFO would hang the
    open), and /dev/zero or a wrong file is refused, not read until memory runs out."""
    if isinstance(image, bytes):
        return image
    return read_user_file(image, "image", limit=MAX_IMAGE_BYTES, error=ServingError)


def _default_model(url: str, protocol: Protocol, timeout: float) -> str:
    try:
        ready = ready_models(url, protocol=protocol, timeout=timeout)
    except ServingError as e:
        if "restricted" not in str(e):
            raise
        # `serve --allow-model-control` puts the repository index, the only list of models, behind its key.
        raise ServingError(f"{url} lists its models only with its control key: give --model NAME") from None
    ensembles = [m for m in ready if m.endswith("_image")]
    if len(ensembles) == 1:
        return ensembles[0]
    raise ServingError(f"give --model; the server has {', '.join(ready) or 'no ready models'}")
