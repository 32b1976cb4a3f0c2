"""Triton's own example clients against what `vitexport repo` writes, on a real Triton over HTTP and gRPC: the
contract `image_client.py` and `ensemble_image_client.py` (triton-inference-server/client, src/python/examples) rely
on, and exactly the requests they send, made here with tritonclient (their code is not copied or run):

- image_client: one input of 3 dims with `format` FORMAT_NCHW or FORMAT_NHWC, one FP32 vector output, the batch from
  `max_batch_size`; pixels resized with Pillow's bilinear filter, scaled NONE (0..255), INCEPTION (-1..1) or VGG
  (mean subtracted), a batch of -b images, `class_count` -c, sent plain, async and (gRPC) streamed; it prints
  "value (index) = label" of each "value:index:label" string.
- ensemble_image_client: one input, the encoded files as a BYTES batch (N, 1), `class_count` on an output.
The image ensemble answers the softmax of every class (`probabilities`, with its labels) beside its top-k: the output on
which the classification extension means something (`labels` are strings, `scores` and `indices` already ranked)."""

from __future__ import annotations

import queue
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from _photos import photo_paths
from PIL import Image
from test_serving_kubernetes import tiny_classifier

from vitexport.ort import ort_session
from vitexport.serving.repository import add_model
from vitexport.serving.server import TritonServer

PROTOCOLS = ("http", "grpc")
VGG_MEAN = np.array((123, 117, 104), dtype=np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vitexport.export.onnx_import import PreprocessFlags, import_onnx

    root = tmp_path_factory.mktemp("triton_clients")
    flags = PreprocessFlags(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=16, crop_pct=1.0, interpolation="bilinear")
    labels = tuple(f"thing {i}" for i in range(10))
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    artifact = import_onnx(tiny_classifier(root / "tiny.onnx"), name="tiny", flags=flags, labels=root / "labels.txt")
    repo = root / "model_repository"
    add_model(repo, artifact, name="tiny")
    with TritonServer(repo, startup_timeout=150) as server:
        yield server, artifact, labels


def module_of(protocol: str):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return grpcclient if protocol == "grpc" else httpclient


def client_of(server, protocol: str, concurrency: int = 1):
    if protocol == "grpc":
        return module_of(protocol).InferenceServerClient(url=server.endpoints.grpc)
    return module_of(protocol).InferenceServerClient(url=server.endpoints.http, concurrency=concurrency)


def metadata_and_config(client, protocol: str, model: str) -> tuple[dict, dict]:
    """The model's metadata and config as plain dicts, as each protocol's client returns them."""
    from google.protobuf.json_format import MessageToDict

    metadata, config = client.get_model_metadata(model), client.get_model_config(model)
    if protocol == "grpc":
        keep = {"preserving_proto_field_name": True}
        return MessageToDict(metadata, **keep), MessageToDict(config.config, **keep)
    return metadata, config


def image_client_pixels(path: Path, c: int, h: int, w: int, scaling: str) -> np.ndarray:
    """image_client.py's preprocessing for an FP32 NCHW input."""
    with Image.open(path) as image:
        typed = np.array(image.convert("RGB").resize((w, h), Image.BILINEAR)).astype(np.float32)
    scaled = {"INCEPTION": typed / 127.5 - 1, "VGG": typed - VGG_MEAN}.get(scaling, typed)
    return np.transpose(scaled, (2, 0, 1))


def check_classes(answer: np.ndarray, logits: np.ndarray, labels: tuple[str, ...], count: int) -> None:
    """Each row's "value:index:label" strings are the `count` best logits, best first, labelled by labels.txt."""
    assert answer.shape == (len(logits), count)
    for row, expected in zip(answer, logits, strict=True):
        fields = [(x.decode() if isinstance(x, bytes) else str(x)).split(":") for x in row]
        assert all(len(f) == 3 for f in fields), fields
        indices = [int(f[1]) for f in fields]
        assert indices == list(np.argsort(-expected, kind="stable")[:count])
        np.testing.assert_allclose([float(f[0]) for f in fields], expected[indices], rtol=1e-4, atol=1e-5)
        assert [f[2] for f in fields] == [labels[i] for i in indices]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_model_meets_image_clients_contract(served, protocol):
    server, _, _ = served
    metadata, config = metadata_and_config(client_of(server, protocol), protocol, "tiny")
    assert len(metadata["inputs"]) == len(config["input"]) == 1 and len(metadata["outputs"]) == 1
    assert metadata["outputs"][0]["datatype"] == "FP32"
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert int(config["max_batch_size"]) > 0 and len(metadata["inputs"][0]["shape"]) == 3 + 1
    assert [int(d) for d in metadata["outputs"][0]["shape"][1:]] == [10]  # a vector of classes
    assert config["output"][0]["label_filename"] == "labels.txt"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("scaling", "batch"), [("NONE", 1), ("INCEPTION", 3), ("VGG", 2)])
def test_image_client_requests_are_answered_with_labels(served, protocol, scaling, batch):
    server, artifact, labels = served
    module, client = module_of(protocol), client_of(server, protocol)
    metadata, _ = metadata_and_config(client, protocol, "tiny")
    c, h, w = (int(d) for d in metadata["inputs"][0]["shape"][1:])
    paths = sorted(photo_paths())
    pixels = np.stack([image_client_pixels(paths[i % len(paths)], c, h, w, scaling) for i in range(batch)])
    tensor = module.InferInput(metadata["inputs"][0]["name"], list(pixels.shape), metadata["inputs"][0]["datatype"])
    tensor.set_data_from_numpy(pixels)
    output = module.InferRequestedOutput(metadata["outputs"][0]["name"], class_count=3)
    result = client.infer("tiny", [tensor], outputs=[output])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    check_classes(result.as_numpy(metadata["outputs"][0]["name"]), logits, labels, 3)


def completed(answers: queue.Queue, result, error) -> None:
    """image_client's callback: tritonclient calls it with `result=` and `error=`."""
    answers.put((result, error))


@pytest.mark.parametrize("mode", ["http_async", "grpc_async", "grpc_streaming"])
def test_image_client_async_and_streaming(served, mode):
    server, artifact, labels = served
    protocol = mode.split("_")[0]
    module, client = module_of(protocol), client_of(server, protocol, concurrency=20)
    pixels = np.stack([image_client_pixels(p, 3, 16, 16, "INCEPTION") for p in sorted(photo_paths())])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    tensor = module.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    outputs = [module.InferRequestedOutput("logits", class_count=3)]
    done: queue.Queue = queue.Queue()
    results = []
    if mode == "http_async":
        handles = [client.async_infer("tiny", [tensor], request_id=str(i), outputs=outputs) for i in range(1, 4)]
        results = [h.get_result() for h in handles]
    elif mode == "grpc_async":
        for i in range(1, 4):
            client.async_infer("tiny", [tensor], partial(completed, done), request_id=str(i), outputs=outputs)
    else:
        client.start_stream(partial(completed, done))
        for i in range(1, 4):
            client.async_stream_infer("tiny", [tensor], request_id=str(i), outputs=outputs)
    while len(results) < 3:
        result, error = done.get(timeout=30)
        assert error is None, error
        results.append(result)
    if mode == "grpc_streaming":
        client.stop_stream()
    for result in results:
        check_classes(result.as_numpy("logits"), logits, labels, 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ensemble_image_client_requests_are_answered_with_labels(served, protocol):
    """ensemble_image_client.py: one input (the encoded files, BYTES, a batch of (N, 1)), `class_count` -c 3; the
    labelled `probabilities` it ranks agree with the ensemble's own top-k."""
    server, _, labels = served
    module, client = module_of(protocol), client_of(server, protocol)
    metadata, config = metadata_and_config(client, protocol, "tiny_image")
    assert len(metadata["inputs"]) == len(config["input"]) == 1 and metadata["inputs"][0]["datatype"] == "BYTES"
    classified = [o["name"] for o in config["output"] if o.get("label_filename")]
    assert classified == ["probabilities"] and [o["datatype"] for o in metadata["outputs"]][-1] == "FP32"
    files = [np.array([p.read_bytes()], dtype=bytes) for p in sorted(photo_paths())]
    batch = np.stack(files, axis=0)
    tensor = module.InferInput(metadata["inputs"][0]["name"], list(batch.shape), "BYTES")
    tensor.set_data_from_numpy(batch, **({"binary_data": True} if protocol == "http" else {}))
    extra = {"binary_data": True} if protocol == "http" else {}
    outputs = [module.InferRequestedOutput("probabilities", class_count=3, **extra)]
    outputs += [module.InferRequestedOutput(name, **extra) for name in ("labels", "scores", "indices")]
    result = client.infer("tiny_image", [tensor], outputs=outputs)
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(files), 3)
    for row, top_labels, top_indices in zip(
        classes, result.as_numpy("labels"), result.as_numpy("indices"), strict=True
    ):
        fields = [x.decode().split(":") for x in row]
        assert [int(f[1]) for f in fields] == list(top_indices[:3])
        assert [f[2] for f in fields] == [x.decode() for x in top_labels[:3]] == [labels[i] for i in top_indices[:3]]
    assert server.is_ready()
