"""The Python-backend model files without a server: a stand-in for `triton_python_backend_utils` (which exists only
inside Triton's stub) is enough to drive `execute` with several requests, as dynamic batching hands them over."""

import importlib.util
import io
import json
import struct
import sys
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from vitexport.models import get_spec
from vitexport.serving.backends import PREPROCESS_MODEL


def bomb_png(side: int = 20_000) -> bytes:
    """A PNG header that claims side x side pixels: Pillow refuses it (DecompressionBombError) before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((40, 50, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


class _Error:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"  # as the stub's TritonError names its codes

    def __init__(self, message: str, code: str = "INTERNAL"):
        self.text, self.code = message, code


_SENT: list = []  # the requests of one execute, in the order they were answered


class _Request(dict):
    """A request whose one response goes through its sender, as the preprocessing model sends it."""

    def get_response_sender(self):
        return types.SimpleNamespace(send=self._send)

    def _send(self, response, flags):
        assert flags == _FINAL and not hasattr(self, "response")  # one final response per request
        self.response = response
        _SENT.append(self)


_FINAL = 1


def answer(model, requests: list) -> list:
    """Run a preprocessing model's execute over requests batched together: their responses, in request order."""
    requests = [_Request(r) for r in requests]
    _SENT.clear()
    assert model.execute(requests) is None
    assert len(_SENT) == len(requests)
    return [r.response for r in requests]


@pytest.fixture
def backend_utils(monkeypatch):
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor, utils.InferenceResponse, utils.TritonError = _Tensor, _Response, _Error
    utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL = _FINAL
    utils.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    return utils


def load_model(path, config: dict, repository: str = ""):
    spec = importlib.util.spec_from_file_location(f"_backend_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": repository, "model_version": "1"})
    return model


def test_preprocessing_fails_only_the_request_that_holds_a_bad_image(backend_utils):
    preprocess = get_spec("test_vit").preprocess
    config = {
        "parameters": {"preprocess": {"string_value": json.dumps(preprocess.to_dict())}},
        "output": [{"name": "pixel_values"}],
    }
    model = load_model(PREPROCESS_MODEL, config)

    def request(*images: bytes):
        return {"image": _Tensor("image", np.array([[b] for b in images], dtype=np.object_))}

    # Requests batched together: good, a decompression bomb, undecodable bytes, good (two images), empty bytes, a
    # 20000 x 1 strip (a few bytes that the short-side resize would make 1,420,000 x 71 pixels).
    batch = [request(png(0)), request(bomb_png()), request(b"not an image"), request(png(1), png(2))]
    responses = answer(model, [*batch, request(b""), request(strip_png())])
    assert [r.error is None for r in responses] == [True, False, False, True, False, False]
    refused = [r.error for r in responses if r.error is not None]
    assert all(e.code == "INVALID_ARG" for e in refused)  # the client's mistakes: HTTP 400, not 500
    assert refused[0].text == "image is 400000000 pixels, over the limit of 50000000"
    assert refused[1].text == "cannot decode image: not an image format Pillow reads"  # no <_io.BytesIO at 0x...>
    assert refused[2].text == "empty image: 0 bytes"
    assert refused[3].text.startswith("image 20000 x 1 would be resized to") and "over the limit of" in refused[3].text
    assert responses[0].output_tensors[0].array.shape == (1, 3, 64, 64)
    assert responses[3].output_tensors[0].array.shape == (2, 3, 64, 64)


def test_a_torchvision_preprocessing_is_served_with_the_same_function(backend_utils):
    """A transformers torchvision processor's config (resize_backend torchvision): the served model loads torch at
    initialize, one thread, and answers preprocess_image's pixels (which equal transformers', tests/
    test_vitexport_preprocess.py), one thread or many."""
    import torch

    from vitexport.preprocess import from_hf_processor, preprocess_image

    d = {"image_processor_type": "DeiTImageProcessorFast", "size": {"height": 70, "width": 61}, "crop_size": 64}
    cfg = from_hf_processor(d)
    config = {
        "parameters": {"preprocess": {"string_value": json.dumps(cfg.to_dict())}},
        "output": [{"name": "pixel_values"}],
    }
    threads = torch.get_num_threads()
    try:
        model = load_model(PREPROCESS_MODEL, config)
        assert model.cfg.resize_backend == "torchvision" and torch.get_num_threads() == 1
        images = [png(3), png(4)]
        [response] = answer(model, [{"image": _Tensor("image", np.array([[b] for b in images], dtype=np.object_))}])
    finally:
        torch.set_num_threads(threads)
    expected = np.stack([preprocess_image(b, cfg) for b in images])  # this process's threads
    np.testing.assert_array_equal(response.output_tensors[0].array, expected)
    pillow = preprocess_image(images[0], from_hf_processor(d, backend="pil"))
    assert not np.array_equal(expected[0], pillow)  # the backend is served, not Pillow's pixels


def strip_png(width: int = 20_000) -> bytes:
    """A real width x 1 PNG: tiny, under every decoded-size limit, huge after a short-side resize."""
    buf = io.BytesIO()
    Image.new("RGB", (width, 1)).save(buf, "PNG")
    return buf.getvalue()


def triton_json(config) -> dict:
    """A config as Triton hands it to a Python-backend model (`args["model_config"]`): the message as JSON."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _model_outputs(artifact):
    from vitexport.serving import config as cfg

    return cfg.model_specs(artifact)[1]


def test_the_top_k_model_reads_the_names_its_config_gives(backend_utils, tmp_path):
    """The classifier's post-processing answers the softmax of every class, the one output Triton ranks into the top
    k (class_count) with its labels."""
    from pathlib import Path

    from vitexport.artifacts import ModelArtifact
    from vitexport.serving import config as cfg
    from vitexport.serving.backends import TOPK_MODEL
    from vitexport.tasks import CLASSIFICATION

    spec = get_spec("test_vit")
    # An imported classifier: its logits are called `output`.
    artifact = ModelArtifact(
        Path("m.onnx"), "onnx", spec.name, spec.preprocess, num_classes=4, output_names=("output",)
    )
    config = cfg.postprocess_config(
        "p", CLASSIFICATION, _model_outputs(artifact), {"top_k": 2}, num_classes=4, max_batch_size=8
    )
    (tmp_path / cfg.LABELS_FILE).write_text("a\nb\nc\nd\n")
    model = load_model(TOPK_MODEL, triton_json(config), str(tmp_path))
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    (response,) = model.execute([{"output": _Tensor("output", logits)}])
    answer = {t.name: t.array for t in response.output_tensors}
    assert list(answer) == ["probabilities"] and answer["probabilities"].dtype == np.float32
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-6)
    assert [o.label_filename for o in config.output] == [cfg.LABELS_FILE]


def test_the_detections_model_reads_the_names_its_config_gives(backend_utils, tmp_path):
    from pathlib import Path

    from vitexport.artifacts import ModelArtifact
    from vitexport.postprocess import detections
    from vitexport.serving import config as cfg
    from vitexport.serving.backends import DETECTIONS_MODEL
    from vitexport.tasks import DETECTION

    spec = get_spec("test_detr")
    artifact = ModelArtifact(
        Path("d.onnx"),
        "onnx",
        spec.name,
        spec.preprocess,
        num_classes=2,
        output_names=("scores_out", "boxes_out"),  # an export naming its outputs its own way
        mask_name="pixel_mask",
        task="detection",
    )
    config = cfg.postprocess_config(
        "p", DETECTION, _model_outputs(artifact), {"threshold": 0.6}, num_classes=2, max_batch_size=8
    )
    (tmp_path / cfg.LABELS_FILE).write_text("cat\ndog\n")
    model = load_model(DETECTIONS_MODEL, triton_json(config), str(tmp_path))
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 3)).astype(np.float32) * 3
    boxes = rng.uniform(0.2, 0.5, (2, 5, 4)).astype(np.float32)
    sizes = np.array([[100, 200], [50, 60]], np.int64)
    request = {
        "scores_out": _Tensor("scores_out", logits),
        "boxes_out": _Tensor("boxes_out", boxes),
        "image_size": _Tensor("image_size", sizes),
    }
    request = types.SimpleNamespace(parameters=lambda: "{}", **request)
    backend_utils.get_input_tensor_by_name = lambda r, name: getattr(r, name)
    (response,) = model.execute([request])
    assert response.error is None
    answer = {t.name: t.array for t in response.output_tensors}
    assert list(answer) == ["boxes", "scores", "labels", "classes", "count"]
    assert 0 < answer["count"].sum() < 10  # some queries over the threshold, not all
    for i in range(2):
        expected = detections(logits[i], boxes[i], tuple(sizes[i]), threshold=0.6, labels=["cat", "dog"])
        assert answer["count"][i, 0] == len(expected)
        rows = range(len(expected))
        assert [answer["labels"][i, j].decode() for j in rows] == [d.label for d in expected]
        np.testing.assert_allclose([answer["boxes"][i, j] for j in rows], [d.box for d in expected], rtol=1e-6)


def _preprocessing(limits=None):
    """The preprocessing model as `repo` writes its config (the request limits among its parameters)."""
    from vitexport.serving import config as cfg
    from vitexport.tasks import CLASSIFICATION

    config = cfg.preprocess_config("p", get_spec("test_vit").preprocess, CLASSIFICATION, max_batch_size=8)
    for key, value in (limits.to_parameters() if limits else {}).items():  # as an operator edits config.pbtxt
        config.parameters[key].string_value = value
    return load_model(PREPROCESS_MODEL, triton_json(config))


def _request(*images: bytes):
    return {"image": _Tensor("image", np.array([[b] for b in images], dtype=np.object_))}


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A real 7000 x 7000 PNG (49 MP, under the per-image limit; 160 KB): 0.6 s to decode, 147 MB as RGB."""
    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_a_request_over_the_pixel_limit_is_refused_before_decoding(backend_utils, big_png):
    import time

    model = _preprocessing()
    assert (model.limits.image_bytes, model.limits.request_bytes) == (32 * 2**20, 64 * 2**20)  # the config's
    t0 = time.perf_counter()
    good, heavy = answer(model, [_request(png(0)), _request(*[big_png] * 8)])  # 8 x 49 MP, each under the limit
    elapsed = time.perf_counter() - t0
    assert good.error is None
    assert heavy.error.code == "INVALID_ARG"
    assert heavy.error.text == (
        "the request's 8 images are 392000000 pixels decoded, over the limit of 64000000 pixels per request"
    )
    assert elapsed < 0.5  # from the headers: decoding the 8 would take 5 s and 1.2 GB of RGB
    # One of them is the per-request share: decoded and answered.
    (one,) = answer(model, [_request(big_png)])
    assert one.error is None and one.output_tensors[0].array.shape == (1, 3, 64, 64)


def test_encoded_bytes_are_bounded_per_image_and_per_request(backend_utils):
    from vitexport.preprocess import RequestLimits

    jpeg = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(jpeg, "JPEG")
    # Data after the JPEG's end (a motion photo's video, or padding): Pillow decodes the JPEG and ignores it; the
    # bytes caps bound it, before anything is decoded.
    appended = jpeg.getvalue() + b"\0" * 300_000
    model = _preprocessing(RequestLimits(image_bytes=200_000, request_bytes=500_000))
    assert model.limits == RequestLimits(image_bytes=200_000, request_bytes=500_000)  # read back from the config
    responses = answer(
        model, [_request(jpeg.getvalue()), _request(appended), _request(*[png(1)] * 3), _request(*[png(1)] * 100)]
    )
    assert responses[0].error is None
    assert responses[1].error.text == f"image 1 is {len(appended)} bytes, over the limit of 200000 bytes per image"
    assert responses[2].error is None
    total = 100 * len(png(1))
    assert responses[3].error.text == (
        f"the request's 100 images are {total} bytes, over the limit of 500000 bytes per request"
    )
    assert all(r.error.code == "INVALID_ARG" for r in responses[1::2])
    (trailing,) = answer(_preprocessing(), [_request(appended)])  # the defaults: 32 MB an image
    assert trailing.error is None
    np.testing.assert_array_equal(trailing.output_tensors[0].array, responses[0].output_tensors[0].array)


def test_request_limits_must_be_positive():
    from vitexport.errors import ImageError
    from vitexport.preprocess import RequestLimits

    with pytest.raises(ImageError, match="request limit request_pixels must be at least 1, not 0"):
        RequestLimits.from_parameters({"max_request_pixels": "0"})
    assert RequestLimits.from_parameters({}) == RequestLimits()  # a repository written before the limits


def test_requests_batched_together_are_answered_lightest_first(backend_utils, big_png):
    """A request Triton batched behind a heavy one is answered before it is decoded, not after."""
    model = _preprocessing()
    responses = answer(model, [_request(big_png), _request(b"not an image"), _request(png(0), png(1))])
    assert [r.error is None for r in responses] == [True, False, True]
    assert [r.response for r in _SENT] == [responses[1], responses[2], responses[0]]  # refused, light, heavy


def test_a_refused_request_leaves_no_copy_of_its_bytes_behind(backend_utils):
    """Its error carries no traceback: the frames would hold the request's bytes in a reference cycle until the
    garbage collector ran (1 GB kept in the stub after the issue's JPEG with 1 GB appended)."""
    import gc
    import tracemalloc

    model = _preprocessing()
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        requests = [_request(b"\xff\xd8" + b"\0" * (40 * 2**20))]  # over 32 MB an image
        (response,) = answer(model, requests)
        assert "over the limit of 33554432 bytes per image" in response.error.text
        del requests, response
        _SENT.clear()  # the stand-in's record of the answered requests
        assert tracemalloc.get_traced_memory()[0] < 2**20  # the 40 MB went with the request
    finally:
        tracemalloc.stop()
        gc.enable()
