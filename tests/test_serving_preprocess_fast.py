"""The fast preprocessing served (issue 24): `repo` writes the fast path where its gate passes for the model (and
records the gate's figures), `--preprocess exact` forces the reference; a real Triton's ensemble on the fast path
answers what the fast path in process gives; a client sends a large photo resized where the gate allows and the
file's bytes with `send="original"`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.export.photos import sized_photos
from vitexport.ort import ort_session
from vitexport.preprocess import ServedPreprocessing, preprocess_image
from vitexport.serving import client
from vitexport.serving import config as cfg
from vitexport.serving.repository import MAX_PREPROCESS_INSTANCES, preprocess_instances_for_machine, scan
from vitexport.serving.sending import for_sending

MODEL = "test_deit_distilled"  # its gate passes for the fast path and for photos sent resized


def _repo(tmp_path, artifact, *args: str) -> dict:
    result = CliRunner().invoke(app, ["repo", str(artifact.path), "--repo", str(tmp_path), *args, "--json"])
    assert result.exit_code == 0, result.output
    return scan(tmp_path)


def test_repo_serves_the_fast_path_where_its_gate_passes_and_records_the_figures(tiny, tmp_path):
    configs = _repo(tmp_path, tiny(MODEL).onnx)
    pre, ensemble = configs[f"{MODEL}_preprocess"], configs[f"{MODEL}_image"]
    chosen = ServedPreprocessing.from_parameters({k: v.string_value for k, v in pre.parameters.items()})
    assert chosen.fast and chosen.send_resized
    assert chosen.gate is not None and chosen.gate["fast"]["passed"] and chosen.gate["fast"]["photos"] == 12
    worst = chosen.gate["fast"]["outputs"]["logits (photos)"]
    assert 0.995 <= worst["cosine"] <= 1 and worst["top1_agreement"] == 1.0
    # What a client reads before sending: the ensemble's own parameters.
    assert cfg.parameter(ensemble, "send") == "resized"
    assert json.loads(cfg.parameter(ensemble, "vitexport_preprocess") or "{}")["input_size"] == 64
    assert pre.instance_group[0].count == preprocess_instances_for_machine() <= MAX_PREPROCESS_INSTANCES


def test_preprocess_exact_forces_the_reference_without_a_gate(tiny, tmp_path):
    configs = _repo(tmp_path, tiny(MODEL).onnx, "--preprocess", "exact")
    pre, ensemble = configs[f"{MODEL}_preprocess"], configs[f"{MODEL}_image"]
    assert cfg.parameter(pre, "preprocess_path") == "exact" and cfg.parameter(pre, "preprocess_gate") == "{}"
    assert cfg.parameter(ensemble, "send") == "original"


def test_photos_that_fail_the_send_gate_are_sent_as_they_are(tiny, tmp_path):
    # test_vit (64 px, [-1, 1]) passes the fast path's gate but not photos sent resized: originals, the figures say why.
    configs = _repo(tmp_path, tiny("test_vit").onnx)
    pre, ensemble = configs["test_vit_preprocess"], configs["test_vit_image"]
    gate = json.loads(cfg.parameter(pre, "preprocess_gate") or "{}")
    assert cfg.parameter(pre, "preprocess_path") == "fast" and cfg.parameter(ensemble, "send") == "original"
    assert not gate["sent resized"]["passed"] and "logits (sent photos)" in gate["sent resized"]["failures"][0]


def test_where_the_gate_cannot_run_the_reference_is_served_and_said_why(tiny):
    from vitexport.pipeline import choose_preprocessing

    engine = tiny(MODEL).onnx.with_(format="tensorrt")  # no TensorRT runner on this CPU: the gate cannot run
    chosen, why = choose_preprocessing(engine)
    assert chosen == ServedPreprocessing(fast=False)
    assert why is not None and why.startswith("preprocessing: exact (the fast path's gate cannot run here: ")


def test_a_bad_preprocess_choice_is_one_line(tiny, tmp_path):
    result = CliRunner().invoke(app, ["repo", str(tiny(MODEL).onnx.path), "--repo", str(tmp_path), "--preprocess", "x"])
    assert result.exit_code == 1
    assert "preprocess must be one of fast, exact, not 'x'" in result.output and "Traceback" not in result.output


def test_served_fast_ensemble_answers_like_the_fast_path_in_process(tiny, tmp_path):
    from vitexport.serving.server import TritonServer

    artifact = tiny(MODEL).onnx
    _repo(tmp_path, artifact)
    photos = dict(sized_photos())
    images = [photos["chelsea-12MP.jpeg"], photos["motorcycle-2MP.png"], photos["chelsea-0.3MP.jpeg"]]
    pixels = np.stack([preprocess_image(b, artifact.preprocess, fast=True) for b in images])
    (logits,) = ort_session(artifact.path).run(["logits"], {"pixel_values": pixels})
    with TritonServer(tmp_path) as server:
        url = server.endpoints.http
        served = client.classify(url, images, model=f"{MODEL}_image", top_k=3, send="original")
        config = client.model_config(url, f"{MODEL}_image")
        resized = client.classify(url, images, model=f"{MODEL}_image", top_k=3)
    for result, row in zip(served, logits, strict=True):
        assert list(result.indices) == np.argsort(-row)[:3].tolist()
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(result.scores, probs[list(result.indices)], atol=1e-5)
    # Sent resized, the top class stays (the send gate's budget); `send="original"` sent the file's bytes.
    assert [r.indices[0] for r in resized] == [r.indices[0] for r in served]
    original = for_sending(config, images, "original")
    assert all(a is b for a, b in zip(original.data, images, strict=True))
    sent = for_sending(config, images, "resized")
    # A 64 px model needs 146 x 146 pixels: even the 0.3 MP photo goes smaller.
    assert len(sent.data[0]) < len(images[0]) / 20 and all(
        len(s) < len(i) for s, i in zip(sent.data, images, strict=True)
    )


def test_a_detectors_boxes_come_back_in_the_originals_pixels():
    """for_sending's scales are what the client multiplies a detector's boxes by (serving/client.py _detect)."""
    config = cfg.model_config_pb2().ModelConfig(name="detr_image")
    detr = {"input_size": 96, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    detr |= {"shortest_edge": 96, "longest_edge": 160}
    config.parameters["vitexport_preprocess"].string_value = json.dumps(detr)
    config.parameters["send"].string_value = "resized"
    photo = dict(sized_photos())["chelsea-12MP.jpeg"]
    sent = for_sending(config, [photo], "resized")
    (sx, sy) = sent.scales[0]
    assert sent.resized and 4032 / sx == pytest.approx(192, abs=1) and 3024 / sy == pytest.approx(144, abs=1)
    assert for_sending(config, [photo], "original").scales == [(1.0, 1.0)]
    config.parameters["send"].string_value = "original"  # the gate failed for this model: sent as they are
    assert for_sending(config, [photo], "resized").data[0] is photo
