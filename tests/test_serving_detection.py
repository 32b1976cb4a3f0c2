"""DETR through serving, against the real Triton server: `vitexport repo` of a test_detr export writes the detector
(pixel_values and pixel_mask in) and its `<name>_image` ensemble (image bytes -> boxes, scores, labels, classes,
count), on ONNX Runtime and on OpenVINO; `detect` over HTTP and gRPC gives exactly what
vitexport.postprocess.detections gives on ONNX Runtime in process for the same photographs, several of different
sizes in one request and across concurrent requests; the threshold and top-k request parameters change the answer;
`vitexport infer` prints boxes, `--json` gives them and `--draw` writes the picture."""

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _photos import photo_paths
from _serving import PROTOCOLS, url
from PIL import Image
from test_serving_backends import bomb_png
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import ServingError
from vitexport.ort import ort_session
from vitexport.postprocess import detections
from vitexport.preprocess import preprocess_detection
from vitexport.serving import client
from vitexport.serving import config as cfg
from vitexport.serving.repository import labels_for, scan
from vitexport.tasks import DETECTION

ATOL = 1e-4
LABELS = [f"class_{i}" for i in range(4)]  # test_detr: 4 classes, no names of its own
runner = CliRunner()


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Three real photographs of three sizes: a temple 640 x 427 (JPEG), a cat 451 x 300 (JPEG), an astronaut
    512 x 512 (PNG)."""
    import skimage.data

    return [
        photo_paths()[0].read_bytes(),
        encoded(skimage.data.chelsea(), "JPEG"),
        encoded(skimage.data.astronaut(), "PNG"),
    ]


@pytest.fixture(scope="module")
def exported(tiny_detr):
    """The session's test_detr export (tests/conftest.py), which the shared `server` serves as detr and detr_ov."""
    return tiny_detr


def in_process(artifact, images: list[bytes], *, threshold: float = 0.0, top_k: int = 100) -> list:
    inputs = [preprocess_detection(b, artifact.preprocess) for b in images]
    feeds = {"pixel_values": np.stack([i.pixels for i in inputs]), "pixel_mask": np.stack([i.mask for i in inputs])}
    logits, boxes = ort_session(artifact.path).run(["logits", "pred_boxes"], feeds)
    return [
        detections(logits[k], boxes[k], i.size, threshold=threshold, top_k=top_k, labels=LABELS)
        for k, i in enumerate(inputs)
    ]


def assert_same(served: list, expected: list) -> None:
    assert [len(s) for s in served] == [len(e) for e in expected]
    for got, want in zip(served, expected, strict=True):
        assert [(d.label, d.class_index) for d in got] == [(d.label, d.class_index) for d in want]
        np.testing.assert_allclose([d.score for d in got], [d.score for d in want], atol=ATOL, rtol=0)
        # Boxes are hundreds of pixels: 1e-4 is a few of float32's steps there (OpenVINO sums in another order).
        np.testing.assert_allclose([d.box for d in got], [d.box for d in want], atol=ATOL, rtol=1e-6)


def test_the_repository_holds_the_detector_and_its_ensemble(server, exported):
    configs = scan(server.repo_dir)
    detector, ensemble = configs["detr"], configs["detr_image"]
    assert [(i.name, i.data_type, list(i.dims)) for i in detector.input] == [
        ("pixel_values", cfg.pb.TYPE_FP32, [3, 96, 96]),
        ("pixel_mask", cfg.pb.TYPE_INT64, [96, 96]),
    ]
    assert [(o.name, list(o.dims)) for o in detector.output] == [("logits", [-1, 5]), ("pred_boxes", [-1, 4])]
    assert [o.name for o in ensemble.output] == ["boxes", "scores", "labels", "classes", "count"]
    assert cfg.task_of_config(detector) is DETECTION and cfg.task_of_config(ensemble) is DETECTION
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["detr_preprocess", "detr", "detr_postprocess"]
    assert (server.repo_dir / "detr_postprocess" / "labels.txt").read_text().splitlines() == LABELS
    assert not (server.repo_dir / "detr" / "labels.txt").exists()
    assert configs["detr_ov"].parameters["runtime"].string_value == "openvino"
    assert {"detr", "detr_image", "detr_ov", "detr_ov_image"} <= set(server.models)


def test_coco_labels_for_a_91_class_detector():
    labels = labels_for(91, task=DETECTION).splitlines()
    assert len(labels) == 91 and labels[:3] == ["N/A", "person", "bicycle"] and labels[-1] == "toothbrush"
    # COCO's category ids with no category: transformers' id2label of facebook/detr-resnet-50 says "N/A" there.
    assert [i for i, name in enumerate(labels) if name == "N/A"] == [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert labels[17] == "cat" and labels[90] == "toothbrush"
    assert labels_for(4, task=DETECTION) == "".join(f"{n}\n" for n in LABELS)
    assert labels_for(91, ("a",) * 91, task=DETECTION) == "a\n" * 91


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["detr_image", "detr_ov_image"])
def test_served_detections_equal_onnxruntime_in_process(server, exported, photos, protocol, model):
    served = client.detect(url(server, protocol), photos, protocol=protocol, threshold=0.0, model=model)
    expected = in_process(exported, photos)
    assert [len(d) for d in served] == [10, 10, 10]  # threshold 0: every query, as many as there are
    assert_same(served, expected)  # boxes in each photograph's own pixels, as in process


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_threshold_and_top_k_change_the_answer(server, exported, photos, protocol):
    every = in_process(exported, photos)
    scores = sorted(d.score for found in every for d in found)
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # about half the detections pass
    served = client.detect(url(server, protocol), photos, protocol=protocol, model="detr_image", threshold=middle)
    assert_same(served, in_process(exported, photos, threshold=middle))
    assert 0 < sum(map(len, served)) < sum(map(len, every))
    served = client.detect(url(server, protocol), photos, protocol=protocol, model="detr_image", threshold=0.0, top_k=2)
    assert [len(found) for found in served] == [2, 2, 2]
    assert_same(served, in_process(exported, photos, top_k=2))
    # Without parameters the repository's defaults apply: threshold 0.5, top-k 100.
    assert_same(
        client.detect(url(server, protocol), photos, protocol=protocol, model="detr_image"),
        in_process(exported, photos, threshold=0.5),
    )
    # Above every score: nothing, for every image (a zero-wide answer).
    assert client.detect(url(server, protocol), photos, protocol=protocol, model="detr_image", threshold=0.999) == [
        [],
        [],
        [],
    ]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, exported, photos):
    def counts():
        metrics = client.read_metrics(server.endpoints.metrics)
        return metrics[("nv_inference_request_success", "detr")], metrics[("nv_inference_exec_count", "detr")]

    requests_before, executions_before = counts()
    jobs = [(photos[i % 3 : i % 3 + 1 + i % 2], 1 + i % 4, "grpc" if i % 2 else "http") for i in range(8)]

    def one(job):
        images, top_k, protocol = job
        return client.detect(
            url(server, protocol), images, protocol=protocol, model="detr_image", threshold=0.0, top_k=top_k
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, jobs))
    for (images, top_k, _), served in zip(jobs, answers, strict=True):
        assert_same(served, in_process(exported, images, top_k=top_k))
    requests_after, executions_after = counts()
    assert requests_after - requests_before == 8
    assert executions_after - executions_before < 8  # several requests in one run of the model


BAD = {
    "undecodable bytes": ({}, b"not an image", r"cannot decode image: not an image format Pillow reads$"),
    "a decompression bomb": ({}, bomb_png(), r"image is 400000000 pixels, over the limit of 50000000$"),
    "a threshold of 1.5": ({"threshold": 1.5}, None, r"parameter threshold must be a number in \[0, 1\), not 1\.5$"),
    "top_k 0": ({"top_k": 0}, None, r"parameter top_k must be an integer >= 1, not 0$"),
    "top_k as text": ({"top_k": "5"}, None, r"parameter top_k must be an integer >= 1, not '5'$"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_one_line_client_errors_and_the_server_stays_ready(server, photos, protocol, case):
    parameters, image, reason = BAD[case]
    inputs = {"image": np.array([[image or photos[1]]], dtype=np.object_)}
    with client.connection(url(server, protocol), protocol) as (triton, module):
        tensor = module.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(inputs["image"])
        with pytest.raises(Exception) as refused:
            triton.infer("detr_image", [tensor], parameters=parameters)
    assert str(refused.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(ServingError, match=f"^detr_image refused the request: in ensemble 'detr_image', {reason}"):
        client.infer(url(server, protocol), "detr_image", inputs, ["count"], protocol=protocol, parameters=parameters)
    server.check_backends()
    assert server.is_ready() and "detr_image" in client.ready_models(url(server, protocol), protocol=protocol)
    assert (
        len(client.detect(url(server, protocol), photos[:1], protocol=protocol, model="detr_image", threshold=0.0)[0])
        == 10
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["detr", "detr_ov"])
def test_a_mask_that_is_not_0_or_1_and_outputs_that_overflow_are_client_errors(server, protocol, model):
    """A pixel_mask of 7 or -1 was a 200, silently (the mask scales the image's features); finite pixels of 3e38
    were a 200 with NaN logits. Both are the client's: 400 / INVALID_ARGUMENT naming the input or output. (OpenVINO's
    graph keeps 3e38 finite: what it answers must then be finite.)"""
    pixels = np.zeros((1, 3, 96, 96), np.float32)
    mask = np.ones((1, 96, 96), np.int64)
    for value in (7, -1):
        bad = np.where(mask == 1, value, 0)
        with client.connection(url(server, protocol), protocol) as (triton, module):
            tensors = [
                module.InferInput("pixel_values", [1, 3, 96, 96], "FP32"),
                module.InferInput("pixel_mask", [1, 96, 96], "INT64"),
            ]
            tensors[0].set_data_from_numpy(pixels)
            tensors[1].set_data_from_numpy(bad)
            with pytest.raises(Exception) as refused:
                triton.infer(model, tensors)
        assert str(refused.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), refused.value
        reason = f"pixel_mask is a mask: its values must be 0 or 1, not {value}$"
        with pytest.raises(ServingError, match=f"^{model} refused the request: {reason}"):
            client.infer(
                url(server, protocol), model, {"pixel_values": pixels, "pixel_mask": bad}, ["logits"], protocol=protocol
            )
    huge = {"pixel_values": pixels + 3e38, "pixel_mask": mask}
    try:
        answer = client.infer(url(server, protocol), model, huge, ["logits", "pred_boxes"], protocol=protocol)
    except ServingError as e:
        overflow = r"(logits|pred_boxes) came out NaN or Inf: input values out of the model's range"
        assert re.fullmatch(f"{model} refused the request: {overflow}", str(e)), e
    else:
        assert model == "detr_ov" and all(np.isfinite(a).all() for a in answer)
    good = client.infer(
        url(server, protocol), model, {"pixel_values": pixels, "pixel_mask": mask}, ["logits"], protocol=protocol
    )
    assert np.isfinite(good[0]).all()
    server.check_backends()


def test_the_wrong_kind_of_model_is_one_line(server, photos):
    with pytest.raises(ServingError, match=r"^detr takes pixels and a mask: detect with its _image ensemble$"):
        client.detect(server.endpoints.http, photos[:1], model="detr")
    with pytest.raises(ServingError, match=r"^detr_preprocess is not a detector: a score threshold is for detectors"):
        client.predict(server.endpoints.http, photos[:1], model="detr_preprocess", threshold=0.5)
    with pytest.raises(ServingError, match=r"^threshold must be in \[0, 1\), got 1\.0$"):
        client.detect(server.endpoints.http, photos[:1], model="detr_image", threshold=1.0)
    # The client asks the model's config what it answers: a detector's are detections, not classes.
    with pytest.raises(ServingError, match=r"^detr_image returns detections, not classes: use detect\(\) or"):
        client.classify(server.endpoints.http, photos[:1], model="detr_image")


@pytest.fixture
def photo_files(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the table folds long ones over several lines
    names = ["temple.jpg", "cat.jpg", "astronaut.png"]
    for name, data in zip(names, photos, strict=True):
        Path(name).write_bytes(data)
    return names


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_prints_boxes_and_json_gives_them(server, exported, photos, photo_files, protocol):
    base = ["infer", "--url", url(server, protocol), "--protocol", protocol, "--model", "detr_image"]
    result = runner.invoke(app, [*base, photo_files[1], "--threshold", "0", "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    (expected,) = in_process(exported, photos[1:2], top_k=3)
    assert [set(r) for r in rows] == [{"box", "score", "label", "class"}] * 3
    assert [(r["label"], r["class"]) for r in rows] == [(d.label, d.class_index) for d in expected]
    np.testing.assert_allclose([r["box"] for r in rows], [d.box for d in expected], atol=0.01)
    np.testing.assert_allclose([r["score"] for r in rows], [d.score for d in expected], atol=ATOL)
    # Several images: one object each, naming the image.
    result = runner.invoke(app, [*base, *photo_files[:2], "--threshold", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert [(r["image"], len(r["detections"])) for r in json.loads(result.output)] == [
        (photo_files[0], 10),
        (photo_files[1], 10),
    ]
    table = runner.invoke(app, [*base, photo_files[1], "--threshold", "0", "--top-k", "3"])
    assert table.exit_code == 0, table.output
    for d in expected:
        assert d.label in table.output and f"{d.score:.4f}" in table.output and f"{d.box[2]:.1f}" in table.output


def test_infer_draw_writes_the_picture(server, exported, photos, photo_files):
    base = ["infer", "--url", server.endpoints.http, "--model", "detr_image", "--threshold", "0", "--top-k", "1"]
    result = runner.invoke(app, [*base, photo_files[1], "--draw", "drawn.jpg"])
    assert result.exit_code == 0, result.output
    ((box,),) = [[d.box for d in found] for found in in_process(exported, photos[1:2], top_k=1)]
    with Image.open("drawn.jpg") as drawn, Image.open(io.BytesIO(photos[1])) as original:
        assert drawn.format == "JPEG" and drawn.size == original.size
        after = np.asarray(drawn.convert("RGB"), np.float32)
        before = np.asarray(original.convert("RGB"), np.float32)
    diff = np.abs(after - before).mean(axis=-1)
    height, width = diff.shape
    x0, y0, _, y1 = (round(v) for v in box)
    assert 0 <= x0 < width - 2 and y1 > y0 + 30, box  # the box's left edge is in the picture
    # Along the box's left edge below its label: the outline, far above JPEG's re-encoding noise.
    edge = diff[max(y0, 0) + 20 : min(y1, height) - 2, max(x0 - 2, 0) : x0 + 3].max(axis=1)  # the line, rounded
    assert edge.size and edge.mean() > 40, (box, edge.mean())
    assert np.median(diff) < 10
    # One picture from one image; an unwritable path: one line each.
    result = runner.invoke(app, [*base, *photo_files[:2], "--draw", "drawn.jpg"])
    assert result.exit_code == 1 and "--draw writes one picture: give one image, not 2" in result.output
    result = runner.invoke(app, [*base, photo_files[1], "--draw", "no/such/folder/drawn.jpg"])
    assert result.exit_code == 1 and "cannot write no/such/folder/drawn.jpg" in result.output
    assert len(result.output.strip().splitlines()) == 1
