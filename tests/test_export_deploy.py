"""`vitexport deploy`: every CPU candidate built and gated, the ones that passed timed side by side, the fastest
written into a repository, and a right answer back through a real Triton: the labelled digits model asked about a
digit image returns its label."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitexport.artifacts import load_artifact
from vitexport.cli import app
from vitexport.errors import VitExportError
from vitexport.export.deploy import parse_candidates

runner = CliRunner()


def test_deploy_serves_the_fastest_gated_candidate_and_the_right_label(digits, tmp_path):
    from vitexport.serving.client import classify
    from vitexport.serving.server import TritonServer

    (tmp_path / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    repo = tmp_path / "repo"
    args = ["deploy", "test_vit_digits", "--checkpoint", str(digits.checkpoint), "--repo", str(repo)]
    args += ["--calibration", str(digits.train), "--images", str(digits.test), "--workdir", str(tmp_path / "work")]
    result = runner.invoke(app, [*args, "--labels", str(tmp_path / "labels.txt"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # notes go to stderr
    candidates = report["candidates"]
    assert {(c["runtime"], c["precision"]) for c in candidates} == {
        ("openvino", "int8"),
        ("openvino", "bf16"),
        ("onnxruntime", "int8"),
        ("onnxruntime", "fp32"),
    }
    passed = [c for c in candidates if c["verdict"] == "passed"]
    assert passed and [c["chosen"] for c in candidates].count(True) == 1 and candidates[0]["chosen"]
    assert [c["img_s"] for c in passed] == sorted((c["img_s"] for c in passed), reverse=True)  # fastest first
    (sidecar,) = (repo / "test_vit_digits" / "1").glob("model.*.json")
    assert load_artifact(sidecar).precision == candidates[0]["precision"]  # the chosen candidate is what is served

    image = next((digits.test / "7").iterdir())
    with TritonServer(repo) as server:
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            (answer,) = classify(url, [image], protocol=protocol, top_k=1)
            assert answer.labels[0] == "digit 7"


@pytest.mark.integration  # deploy's whole pipeline: export, INT8 calibration, gates, timing
def test_deploy_calibrates_on_photographs_by_default_and_says_so(tmp_path):
    args = ["deploy", "test_vit", "--repo", str(tmp_path / "r"), "--runtimes", "onnxruntime-fp32,openvino-int8"]
    result = runner.invoke(app, [*args, "--workdir", str(tmp_path / "w"), "--json"])
    assert result.exit_code == 0, result.output
    assert "calibrating on real photographs" in result.stderr
    candidates = json.loads(result.stdout)["candidates"]
    assert {(c["runtime"], c["precision"]) for c in candidates} == {("onnxruntime", "fp32"), ("openvino", "int8")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope_model"], "unknown model 'nope_model'"),
        (["test_vit", "--runtimes", "foo-bar"], "--runtimes takes RUNTIME-PRECISION items"),
        (["test_vit", "--calibration", "/nonexistent"], "--calibration /nonexistent is not a folder"),
    ],
)
def test_bad_input_ends_before_any_work(tmp_path, args, message):
    result = runner.invoke(app, ["deploy", *args, "--repo", str(tmp_path / "r"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1 and message in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def test_bad_candidates_are_one_line():
    with pytest.raises(VitExportError, match="RUNTIME-PRECISION"):
        parse_candidates("openvino-int4")
    assert parse_candidates("openvino-int8, onnxruntime-fp32")[1].runtime.value == "onnxruntime"


def test_deploy_serves_a_detector_with_its_image_ensemble(tmp_path):
    """DETR through deploy: candidates gated by the detection gate, timed one image at a time, the fastest served
    with its image ensemble; a photograph asked over HTTP and gRPC returns boxes inside the picture."""
    from _photos import photo_paths
    from PIL import Image

    from vitexport.serving.client import detect
    from vitexport.serving.server import TritonServer

    repo = tmp_path / "repo"
    args = ["deploy", "test_detr", "--repo", str(repo), "--runtimes", "onnxruntime-fp32,openvino-int8"]
    result = runner.invoke(app, [*args, "--workdir", str(tmp_path / "w"), "--name", "detr"])
    assert result.exit_code == 0, result.output
    assert "class agreement" in result.stdout  # a detector's gate is graded per query, not by top-1
    assert {p.name for p in repo.iterdir()} >= {"detr", "detr_image"}
    photo = photo_paths()[0]
    width, height = Image.open(photo).size
    answers = []
    with TritonServer(repo) as server:
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            (found,) = detect(url, [photo], protocol=protocol, threshold=0.0, top_k=3, model="detr_image")
            assert len(found) == 3 and found[0].score >= found[-1].score
            for d in found:  # random weights: boxes near the picture (DETR does not clip them), in its pixels
                x0, y0, x1, y1 = d.box
                assert -width <= x0 <= x1 <= 2 * width and -height <= y0 <= y1 <= 2 * height
            answers.append([(d.label, round(d.score, 5), tuple(round(v, 2) for v in d.box)) for d in found])
    assert answers[0] == answers[1]  # the same answer whichever protocol asks
