"""The gate's own logic on plain functions as runners: which checks apply where, the accuracy arithmetic, and the
image folders it reads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitexport.errors import ValidationError, VitExportError
from vitexport.export.gate import check_gate, evaluate, hold_out, load_image_folder
from vitexport.export.validate import TOLERANCES, Tolerance
from vitexport.preprocess import PreprocessConfig

CFG = PreprocessConfig(16, crop_pct=1.0, interpolation="bilinear")
W = np.random.default_rng(1).standard_normal((3 * 16 * 16, 10)).astype(np.float32)


def linear(x: np.ndarray) -> list[np.ndarray]:
    return [x.reshape(len(x), -1) @ W]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_labels_by_sorted_class(folder):
    images = load_image_folder(folder, CFG)
    assert images.images.shape == (6, 3, 16, 16) and images.classes == ("cat", "dog")
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert load_image_folder(folder, CFG, limit=2).labels.tolist() == [0, 1]  # spread over classes


def test_hold_out_is_disjoint_and_keeps_every_class(folder):
    images = load_image_folder(folder, CFG)
    held, rest = hold_out(images, 3)
    assert held.labels.tolist() == [0, 1] and rest.labels.tolist() == [0, 0, 1, 1]
    assert len(held.images) + len(rest.images) == len(images.images)
    together = np.concatenate([held.images, rest.images]).reshape(6, -1)
    assert len(np.unique(together, axis=0)) == 6  # no image is in both parts


def test_flat_folder_is_unlabelled(folder):
    assert load_image_folder(folder / "cat", CFG).labels is None


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_folder_errors(tmp_path, make):
    with pytest.raises(VitExportError, match=r"does not exist|no images"):
        load_image_folder(make(tmp_path), CFG)


def test_identical_runner_passes_fp32_with_accuracy(folder):
    images = load_image_folder(folder, CFG)
    report = evaluate(linear, linear, precision="fp32", input_size=16, images=images)
    assert report.passed and report.to_dict()["accuracy"]["top1_drop"] == 0
    assert report.to_dict()["accuracy"]["reference_top1"] == report.to_dict()["accuracy"]["candidate_top1"]
    check_gate(report)


def test_noise_beyond_budget_fails_every_check(folder):
    images = load_image_folder(folder, CFG)

    def noisy(x):
        return [linear(x)[0] + np.random.default_rng(0).standard_normal((len(x), 10)).astype(np.float32) * 50]

    report = evaluate(noisy, linear, precision="fp16", input_size=16, images=images)
    assert not report.passed
    assert any("max abs" in f for f in report.failures) and any("cosine" in f for f in report.failures)
    with pytest.raises(ValidationError, match="fp16 variant over budget"):
        check_gate(report)


def test_accuracy_drop_alone_fails(folder):
    images = load_image_folder(folder, CFG)

    # A reference right on every image; a candidate equal to it but with class 0's logit lowered below the others:
    # drift within the (loose) budget, but wrong answers on the cat images.
    def reference(x):
        out = np.zeros((len(x), 10), np.float32)
        out[np.arange(len(x)), images.labels[: len(x)]] = 1.0
        return [out]

    def candidate(x):
        out = reference(x)[0]
        out[:, 0] -= 1.1
        return [out]

    tol = Tolerance(max_abs=2.0, min_cosine=-1.0, min_top1_agreement=0.0, max_top1_drop=1.0)
    report = evaluate(candidate, reference, precision="fp16", input_size=16, images=images, tolerance=tol)
    assert report.to_dict()["accuracy"]["top1_drop"] == pytest.approx(50.0)
    assert report.failures == ["top-1 accuracy 50.00% vs reference 100.00%: drop 50.00 pt > 1 pt on 6 images"]


def test_int8_does_not_gate_random_inputs_when_images_are_given(folder):
    images = load_image_folder(folder, CFG)

    def clipped(x):  # what calibrated INT8 does to out-of-range inputs
        return linear(np.clip(x, -0.2, 0.2))

    assert not TOLERANCES["int8"].gate_random_inputs
    with_images = evaluate(clipped, linear, precision="int8", input_size=16, images=images)
    without = evaluate(clipped, linear, precision="int8", input_size=16)
    assert not any("random" in f for f in with_images.failures)
    assert any("random" in f for f in without.failures)


def test_unknown_precision():
    with pytest.raises(VitExportError, match="no accuracy budget"):
        evaluate(linear, linear, precision="int4", input_size=16)
