"""The accuracy gate and the optimize/validate commands, on a tiny ViT trained on scikit-learn's digits: good
variants pass, a variant calibrated on one black image and a variant with two classes swapped are rejected."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from vitexport.artifacts import load_artifact
from vitexport.cli import app
from vitexport.errors import ArtifactError, ValidationError
from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.export.quantize import QuantMethod

runner = CliRunner()


@pytest.fixture(scope="module")
def black_image(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("black")
    Image.new("RGB", (64, 64)).save(folder / "0.png")
    return folder


def _fails(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output


def test_cli_optimize_prints_op_counts_and_accuracy(digits, tmp_path):
    out = tmp_path / "fp16.onnx"
    result = runner.invoke(
        app, ["optimize", str(digits.onnx.path), "--precision", "fp16", "-o", str(out), "--images", str(digits.test)]
    )
    assert result.exit_code == 0, result.output
    assert "Softmax" in result.stdout and "Attention" in result.stdout  # the op-count table
    assert "accuracy on 360 labelled images" in result.stdout
    assert result.stdout.strip().endswith(str(out))
    artifact = load_artifact(out)
    assert artifact.precision == "fp16" and artifact.source == str(digits.onnx.sidecar)
    assert artifact.validation["accuracy"]["top1_drop"] <= 0.3


def test_cli_optimize_json(digits, tmp_path):
    out = tmp_path / "ort.onnx"
    result = runner.invoke(app, ["optimize", str(digits.onnx.path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["precision"] == "fp32" and data["fuse_attention"] == "ort"
    assert (
        data["details"]["op_counts"]["before"]["Softmax"] == 2
        and "Softmax" not in data["details"]["op_counts"]["after"]
    )


def test_cli_optimize_a_registered_model(tmp_path):
    out = tmp_path / "vit.onnxruntime-fp16.onnx"
    result = runner.invoke(app, ["optimize", "test_vit", "--precision", "fp16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "test_vit.onnx.json").is_file() and load_artifact(out).precision == "fp16"


@pytest.mark.integration  # INT8 calibration and the gate
@pytest.mark.parametrize("runtime", [Runtime.onnxruntime, Runtime.openvino])
def test_gate_rejects_int8_calibrated_on_a_black_image(digits, black_image, runtime, tmp_path):
    out = tmp_path / ("bad.xml" if runtime is Runtime.openvino else "bad.onnx")
    out.with_name(out.name + ".json").write_text("{}")  # what an earlier run left: a failed run leaves it as it was
    steps: list[str] = []
    with pytest.raises(ValidationError, match=r"top-1 accuracy .* drop"):
        optimize(
            digits.onnx,
            runtime=runtime,
            precision=Precision.int8,
            quant_method=QuantMethod.static if runtime is Runtime.onnxruntime else None,
            calibration=black_image,
            images=digits.test,
            output=out,
            progress=steps.append,
        )
    # The variant was written and gated in a staging folder, now gone: no later stage picks it up.
    assert out.with_name(out.name + ".json").read_text() == "{}" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name + ".json"]
    if runtime is Runtime.openvino:  # NNCF's second recipe was tried before giving up
        assert "recipe transformer over budget; trying transformer-no-smoothquant" in steps


def test_cli_optimize_over_budget_exits_1(digits, black_image, tmp_path):
    args = ["optimize", str(digits.onnx.path), "--precision", "int8", "--quant-method", "static"]
    args += ["--calibration", str(black_image), "--images", str(digits.test), "-o", str(tmp_path / "bad.onnx")]
    _fails(runner.invoke(app, args), "int8 variant over budget")


@pytest.fixture(scope="module")
def good_and_swapped(digits, tmp_path_factory):
    """A good FP16 variant, and a copy whose classifier rows of classes 3 and 8 are swapped: a subtly broken
    variant (same ops, same value ranges) that only a real-data check catches."""
    folder = tmp_path_factory.mktemp("swap")
    good = optimize(digits.onnx, precision=Precision.fp16, output=folder / "good.onnx")
    model = onnx.load(good.path)
    head = next(t for t in model.graph.initializer if t.dims == [64, 10] or list(t.dims) == [10, 64])
    w = onnx.numpy_helper.to_array(head).copy()
    axis = list(w.shape).index(10)
    w = np.swapaxes(w, 0, axis)
    w[[3, 8]] = w[[8, 3]]
    head.CopyFrom(onnx.numpy_helper.from_array(np.swapaxes(w, 0, axis), head.name))
    onnx.save(model, folder / "swapped.onnx")
    good.with_(path=folder / "swapped.onnx").save()
    return good.path, folder / "swapped.onnx"


def test_cli_validate_passes_a_good_variant(digits, good_and_swapped):
    good, _ = good_and_swapped
    result = runner.invoke(
        app, ["validate", str(good), "--reference", str(digits.onnx.path), "--images", str(digits.test)]
    )
    assert result.exit_code == 0, result.output
    assert "reference" in result.stdout and "candidate" in result.stdout


def test_cli_validate_rejects_swapped_classes(digits, good_and_swapped):
    _, swapped = good_and_swapped
    args = ["validate", str(swapped), "--reference", str(digits.onnx.path), "--images", str(digits.test)]
    result = runner.invoke(app, args)
    _fails(result, "fp16 variant over budget")
    assert "top-1 accuracy" in result.stderr and "pt on 360 images" in result.stderr


def test_cli_validate_against_pytorch_with_the_checkpoint(digits, good_and_swapped):
    good, _ = good_and_swapped
    args = ["validate", str(good), "--reference", "test_vit_digits", "--checkpoint", str(digits.checkpoint), "--json"]
    result = runner.invoke(app, [*args, "--images", str(digits.test)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["accuracy"]["reference_top1"] > 90


def test_cli_validate_refuses_other_weights(digits, good_and_swapped, tmp_path):
    good, _ = good_and_swapped
    other = tmp_path / "other.pt"
    shutil.copy(digits.checkpoint, other)
    other.write_bytes(other.read_bytes() + b"\0")
    args = ["validate", str(good), "--reference", "test_vit_digits", "--checkpoint", str(other)]
    _fails(runner.invoke(app, args), "is not the checkpoint")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int4"], "Invalid value for '--precision': 'int4' is not one of 'fp32', 'fp16'"),
        (["--runtime", "tvm"], "Invalid value for '--runtime'"),
        (["--fuse-attention", "trt"], "Invalid value for '--fuse-attention'"),
        (["--precision", "bf16"], "no BF16 kernels"),
        (["--runtime", "openvino", "--fuse-attention", "ort"], "--fuse-attention none"),
        (["--calibration", "/nonexistent", "--precision", "int8", "--runtime", "openvino"], "does not exist"),
    ],
)
def test_cli_optimize_rejects_bad_options(digits, args, message, tmp_path):
    _fails(runner.invoke(app, ["optimize", str(digits.onnx.path), *args]), message)


def test_a_variant_is_not_a_source(good_and_swapped, tmp_path):
    good, _ = good_and_swapped
    with pytest.raises(ArtifactError, match="already an optimized variant"):
        optimize(load_artifact(good), precision=Precision.fp32, output=tmp_path / "again.onnx")


def test_cli_validate_needs_an_fp32_reference(digits, good_and_swapped):
    good, swapped = good_and_swapped
    _fails(runner.invoke(app, ["validate", str(swapped), "--reference", str(good)]), "the reference must be fp32")
