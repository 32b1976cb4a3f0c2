"""Classify images (or embed them) on a running Triton server over HTTP or gRPC with tritonclient (imported lazily).

Two kinds of served model are handled: the `<name>_image` ensemble (encoded bytes in, top-k labels out) and a
plain classifier (pixels in): for the latter the images are preprocessed here, following the preprocessing
config the repository wrote into the model's parameters, and labels come from Triton's classification extension.
Models exported with `--head features` answer with an embedding instead: `embed` asks them (ensemble or plain
model alike), `classify` refuses them in one line, and `predict` (the CLI's `infer`) takes whichever the model is.
Detectors (DETR) answer with boxes: `detect` asks their `_image` ensemble, with the score threshold and top-k as
request parameters; a model's config (its `vitexport_task` parameter) says it is one, not its name.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.errors import ServingError, VitExportError
from vitexport.postprocess import Detection, check_settings
from vitexport.preprocess import PreprocessConfig
from vitexport.serving import config as cfg

# Seconds to wait for a connection and for each reply: long enough for a large batch on a busy CPU server, short
# enough that a server that accepted the connection but hangs does not hang the client forever.
DEFAULT_TIMEOUT = 60.0


class Protocol(str, Enum):
    http = "http"
    grpc = "grpc"

    @property
    def default_url(self) -> str:
        return "localhost:8000" if self is Protocol.http else "localhost:8001"


def parse_protocol(value: Protocol | str) -> Protocol:
    try:
        return Protocol(value)
    except ValueError:
        raise ServingError(f"protocol must be http or grpc, not {value!r}") from None


@dataclass(frozen=True)
class TopK:
    """One image's best classes, best first; scores are softmax probabilities."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    indices: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "scores": list(self.scores), "indices": list(self.indices)}


def connect(url: str, protocol: Protocol | str = Protocol.http, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Any]:
    """A tritonclient InferenceServerClient for the protocol, and its module (for InferInput). Close it when done
    (or use `connection`): an idle open connection makes the server wait its whole exit timeout when it stops.

    The HTTP client gets `timeout` for connecting and for each reply; gRPC takes it per call (`call_options`)."""
    protocol = parse_protocol(protocol)
    url = re.sub(r"^https?://", "", url)
    _check_url(url)
    if protocol is Protocol.http:
        module = cfg.import_tritonclient("tritonclient.http")
        options = {"connection_timeout": timeout, "network_timeout": timeout}
    else:
        module = cfg.import_tritonclient("tritonclient.grpc")
        options = {}
    try:
        return module.InferenceServerClient(url=url, **options), module
    except Exception as e:  # tritonclient raises plain exceptions for malformed URLs
        raise ServingError(f"cannot connect to {url}: {e}") from None


def _check_url(url: str) -> None:
    """HOST:PORT, refused here in one line: tritonclient's own failure also prints a traceback from its destructor."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(f"//{url}")
        parts.port  # noqa: B018 (parsing it is the check: ValueError outside 0..65535 or not a number)
    except ValueError as e:
        raise ServingError(f"cannot connect to {url}: {e} (give HOST:PORT)") from None
    if not parts.hostname:
        raise ServingError(f"cannot connect to {url}: no host (give HOST:PORT)")


@contextlib.contextmanager
def connection(
    url: str, protocol: Protocol | str = Protocol.http, *, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[tuple[Any, Any]]:
    """`connect`, closed on exit."""
    client, module = connect(url, protocol, timeout=timeout)
    try:
        yield client, module
    finally:
        client.close()


def call_options(protocol: Protocol | str, timeout: float) -> dict[str, float]:
    """Keyword arguments that bound one gRPC call to `timeout` seconds (HTTP clients carry theirs from `connect`)."""
    return {"client_timeout": timeout} if parse_protocol(protocol) is Protocol.grpc else {}


def _call(what: str, timeout: float, fn, *args, **kwargs):
    """Run a tritonclient call, turning its errors (a timeout included) into one-line ServingErrors."""
    from http.client import HTTPException

    from tritonclient.utils import InferenceServerException

    try:
        return fn(*args, **kwargs)
    except InferenceServerException as e:
        if str(e.status()).endswith("DEADLINE_EXCEEDED"):
            raise ServingError(f"{what}: no reply within {timeout:g} s") from None
        message = e.message() or str(e)
        if "Socket closed" in message:  # something listens there, and it does not speak gRPC
            message += " (not a gRPC port? try --protocol http)"
        raise ServingError(f"{what}: {message}") from None
    except HTTPException:  # geventhttpclient's parser: the reply was not HTTP, as a gRPC port's is not
        raise ServingError(f"{what}: the reply is not HTTP (a gRPC port? try --protocol grpc)") from None
    except TimeoutError:
        raise ServingError(f"{what}: no reply within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise ServingError(f"{what}: {e}") from None


def model_config(
    url: str, model: str, *, protocol: Protocol | str = Protocol.http, timeout: float = DEFAULT_TIMEOUT
) -> cfg.pb.ModelConfig:
    """The config Triton serves for a model, as a ModelConfig message whichever the protocol."""
    from google.protobuf import json_format

    with connection(url, protocol, timeout=timeout) as (client, _):
        what = f"cannot read {model}'s config from {url}"
        data = _call(what, timeout, client.get_model_config, model, **call_options(protocol, timeout))
    if Protocol(protocol) is Protocol.grpc:
        return data.config
    return json_format.ParseDict(data, cfg.pb.ModelConfig(), ignore_unknown_fields=True)


def ready_models(url: str, *, protocol: Protocol | str = Protocol.http, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    with connection(url, protocol, timeout=timeout) as (client, _):
        what = f"cannot reach Triton at {url}"
        index = _call(what, timeout, client.get_model_repository_index, **call_options(protocol, timeout))
    if Protocol(protocol) is Protocol.grpc:
        return [m.name for m in index.models if m.state == "READY"]
    return [m["name"] for m in index if m.get("state") == "READY"]


def infer(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    *,
    protocol: Protocol | str = Protocol.http,
    timeout: float = DEFAULT_TIMEOUT,
    parameters: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """One inference request with numpy inputs (object arrays for strings) and request parameters; returns the
    named outputs."""
    from tritonclient.utils import np_to_triton_dtype

    with connection(url, protocol, timeout=timeout) as (client, module):
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [module.InferRequestedOutput(name) for name in outputs]
        options: dict[str, Any] = call_options(protocol, timeout)
        if parameters:
            options["parameters"] = parameters
        result = _call(
            f"{model} refused the request", timeout, client.infer, model, tensors, outputs=requested, **options
        )
    return [result.as_numpy(name) for name in outputs]


def classify(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    top_k: int = cfg.DEFAULT_TOP_K,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[TopK]:
    """Top-k classes for each image (file paths or encoded bytes), in one batched request; each call to the server
    waits at most `timeout` seconds."""
    protocol, data = _check_request(protocol, images, timeout)
    if top_k < 1:
        raise ServingError(f"top-k must be >= 1, got {top_k}")
    model, config = _served(url, model, protocol, timeout)
    if returns_embeddings(config):
        raise ServingError(f"{model} returns embeddings, not classes: use embed() or `vitexport infer`")
    return _classify(url, model, config, data, protocol, top_k, timeout)


def embed(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[np.ndarray]:
    """The embedding (float32, (D,)) of each image (file paths or encoded bytes) from a model exported with
    `--head features`: its `_image` ensemble, or the model itself with the images preprocessed here. The vectors
    are the model's raw output, not normalised."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout)
    if not returns_embeddings(config):
        raise ServingError(f"{model} returns classes, not embeddings: use classify() or `vitexport infer`")
    return _embed(url, model, config, data, protocol, timeout)


def predict(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    model: str | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[TopK] | list[np.ndarray] | list[list[Detection]]:
    """What the served model answers for each image: its top-k classes (`classify`), the embedding of a model
    returning embeddings (`embed`), or a detector's detections (`detect`). `top_k` applies to classes (default 5)
    and detections (default: the server's), `threshold` to detections only. What `vitexport infer` shows."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout)
    if cfg.is_detector(config):
        return _detect(url, model, config, data, protocol, threshold, top_k, timeout)
    if threshold is not None:
        raise ServingError(f"{model} is not a detector: a score threshold is for detectors")
    if returns_embeddings(config):
        return _embed(url, model, config, data, protocol, timeout)
    top_k = cfg.DEFAULT_TOP_K if top_k is None else top_k
    if top_k < 1:
        raise ServingError(f"top-k must be >= 1, got {top_k}")
    return _classify(url, model, config, data, protocol, top_k, timeout)


def detect(
    url: str,
    images: Sequence[str | Path | bytes],
    *,
    protocol: Protocol | str = Protocol.http,
    threshold: float | None = None,
    top_k: int | None = None,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[list[Detection]]:
    """The objects a detector's `_image` ensemble finds in each image (file paths or encoded bytes), most confident
    first, boxes (x0, y0, x1, y1) in the image's own pixels. `threshold` and `top_k` go with the request (None: the
    repository's defaults, 0.5 and 100 unless `repo` was told otherwise)."""
    protocol, data = _check_request(protocol, images, timeout)
    model, config = _served(url, model, protocol, timeout)
    if not cfg.is_detector(config):
        raise ServingError(f"{model} is not a detector: use classify(), embed() or `vitexport infer`")
    return _detect(url, model, config, data, protocol, threshold, top_k, timeout)


def _detect(url, model, config, data, protocol, threshold, top_k, timeout) -> list[list[Detection]]:
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
            {cfg.IMAGE_INPUT: images},
            cfg.DETECTION_OUTPUTS,
            protocol=protocol,
            timeout=timeout,
            parameters=parameters,
        )
        for b in range(len(images)):
            rows = range(int(count[b, 0]))  # the rows after these are padding: another image had more detections
            found.append(
                [
                    Detection(
                        tuple(float(v) for v in boxes[b, j]),
                        float(scores[b, j]),
                        int(classes[b, j]),
                        _text(labels[b, j]),
                    )
                    for j in rows
                ]
            )
    return found


def returns_embeddings(config: cfg.pb.ModelConfig) -> bool:
    """Whether a served model (a `--head features` export, or its `_image` ensemble) answers with an embedding."""
    return cfg.returns_embeddings([output.name for output in config.output])


def _check_request(
    protocol: Protocol | str, images: Sequence[str | Path | bytes], timeout: float
) -> tuple[Protocol, list[bytes]]:
    protocol = parse_protocol(protocol)
    if not images:
        raise ServingError("no images given")
    if not timeout > 0:
        raise ServingError(f"timeout must be > 0 seconds, got {timeout}")
    return protocol, [_read(image) for image in images]


def _served(url: str, model: str | None, protocol: Protocol, timeout: float) -> tuple[str, cfg.pb.ModelConfig]:
    model = model or _default_model(url, protocol, timeout)
    return model, model_config(url, model, protocol=protocol, timeout=timeout)


def _is_ensemble_input(config: cfg.pb.ModelConfig) -> bool:
    return bool(config.input) and config.input[0].data_type == cfg.pb.TYPE_STRING


def _classify(url, model, config, data: list[bytes], protocol, top_k: int, timeout: float) -> list[TopK]:
    run = _classify_ensemble if _is_ensemble_input(config) else _classify_pixels
    # More images than the model's max batch go as several requests; a fixed-batch model takes one at a time.
    step = config.max_batch_size or 1
    return [
        r
        for i in range(0, len(data), step)
        for r in run(url, model, config, data[i : i + step], protocol, top_k, timeout)
    ]


def _embed(url, model, config, data: list[bytes], protocol, timeout: float) -> list[np.ndarray]:
    ensemble = _is_ensemble_input(config)
    # A fixed-batch model (max_batch_size 0, the batch in its dims) takes exactly that batch: the last request is
    # filled up with zero images, whose rows are dropped (each image's embedding depends on that image alone).
    fixed = None if ensemble or config.max_batch_size else config.input[0].dims[0]
    preprocess = None if ensemble else _preprocess_config(model, config)
    step = fixed or config.max_batch_size  # more images than a batch go as several requests
    vectors: list[np.ndarray] = []
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        if preprocess is None:
            inputs = {cfg.IMAGE_INPUT: np.array([[d] for d in chunk], dtype=np.object_)}  # (B, 1) encoded images
        else:
            pixels = _pixels(chunk, preprocess)
            if fixed and len(chunk) < fixed:
                pixels = np.concatenate([pixels, np.zeros((fixed - len(chunk), *pixels.shape[1:]), np.float32)])
            inputs = {config.input[0].name: pixels}
        (out,) = infer(url, model, inputs, [cfg.EMBEDDINGS], protocol=protocol, timeout=timeout)
        rows = np.asarray(out, dtype=np.float32).reshape(-1, out.shape[-1])  # (B, D); a fixed batch's padding too
        vectors += list(rows[: len(chunk)])
    return vectors


MAX_IMAGE_BYTES = 128 << 20  # an encoded image file: 50 MP (the server's decoded limit) even as an uncompressed PNG


def _read(image: str | Path | bytes) -> bytes:
    """An image file's bytes, at most MAX_IMAGE_BYTES of them read: /dev/zero or a wrong file is refused, not read
    until memory runs out."""
    if isinstance(image, bytes):
        return image
    try:
        with open(image, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ServingError(f"cannot read image {image}: {e.strerror or e}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ServingError(f"image {image} is over {MAX_IMAGE_BYTES >> 20} MB: not an image file?")
    return data


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


def _classify_ensemble(url, model, config, data: list[bytes], protocol, top_k: int, timeout: float) -> list[TopK]:
    served_k = config.output[0].dims[-1] if config.output else 0
    if top_k > served_k:
        raise ServingError(f"{model} returns the top {served_k}; ask for --top-k {served_k} or fewer")
    images = np.array([[d] for d in data], dtype=np.object_)  # (B, 1): one encoded image per row
    labels, scores, indices = infer(
        url,
        model,
        {cfg.IMAGE_INPUT: images},
        [cfg.TOP_K_LABELS, cfg.TOP_K_SCORES, cfg.TOP_K_INDICES],
        protocol=protocol,
        timeout=timeout,
    )
    return [
        TopK(
            tuple(_text(x) for x in labels[i, :top_k]),
            tuple(float(x) for x in scores[i, :top_k]),
            tuple(int(x) for x in indices[i, :top_k]),
        )
        for i in range(len(data))
    ]


def _preprocess_config(model: str, config: cfg.pb.ModelConfig) -> PreprocessConfig:
    """How a plain model (pixels in) wants its images: the repository writes it into the model's parameters."""
    raw = cfg.parameter(config, "vitexport_preprocess")
    if raw is None:
        raise ServingError(f"{model} has no vitexport_preprocess parameter; was it written by `vitexport repo`?")
    return PreprocessConfig.from_dict(json.loads(raw))


def _pixels(data: list[bytes], preprocess: PreprocessConfig) -> np.ndarray:
    from vitexport.preprocess import preprocess_image

    try:
        return np.stack([preprocess_image(d, preprocess) for d in data])
    except VitExportError as e:
        raise ServingError(str(e)) from None


def _classify_pixels(url, model, config, data: list[bytes], protocol, top_k: int, timeout: float) -> list[TopK]:
    if config.max_batch_size == 0 and config.input[0].dims[0] != 1:
        # Triton's classification extension ranks a whole unbatched output tensor, not each row of it.
        raise ServingError(f"{model} has a fixed batch of {config.input[0].dims[0]}; classify with its _image ensemble")
    pixels = _pixels(data, _preprocess_config(model, config))
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
        result = _call(what, timeout, client.infer, model, [tensor], outputs=[requested], **options)
    rows = result.as_numpy(output.name).reshape(len(pixels), num_classes)
    results = []
    for row in rows:
        entries = [_text(x).split(":", 2) for x in row]  # "value:index[:label]", best first
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metrics(metrics_url: str) -> dict[tuple[str, str], float]:
    """Triton's Prometheus counters summed per (metric, model): e.g. ("nv_inference_exec_count", "deit")."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        raise ServingError(f"cannot read metrics from {metrics_url}: {e}") from None
    totals: dict[tuple[str, str], float] = {}
    for match in re.finditer(r'^(\w+)\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$', text, re.MULTILINE):
        key = (match.group(1), match.group(2))
        totals[key] = totals.get(key, 0.0) + float(match.group(3))
    return totals
