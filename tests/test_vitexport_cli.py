import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.export.onnx import export_onnx
from vitexport.models import create_model
from vitexport.ort import ort_session

runner = CliRunner()
VITEXPORT = [sys.executable, "-m", "vitexport.cli"]


def test_help_is_instant_and_imports_no_heavy_library():
    start = time.perf_counter()
    probe = "import sys, vitexport.cli; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    result = subprocess.run([*VITEXPORT, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "onnx" in result.stdout
    assert time.perf_counter() - start < 10


def test_models_table_and_json():
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0
    assert "deit_base_patch16_224" in table.output and "deit_base" in table.output
    assert "test_vit" not in table.output
    listed = json.loads(runner.invoke(app, ["models", "--json", "--family", "deit"]).output)
    by_name = {m["name"]: m for m in listed}
    assert {m["family"] for m in listed} == {"deit"}
    assert by_name["deit_small_patch16_224"]["params"] == 22050664
    assert by_name["deit_base_distilled_patch16_224"]["distilled"] is True
    assert by_name["deit_base_patch16_384"]["preprocess"]["input_size"] == 384


def test_onnx_json_output(tmp_path):
    result = runner.invoke(app, ["onnx", "test_vit", "--output", str(tmp_path / "v.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["model"] == "test_vit"
    assert described["validation"]["passed"] is True
    assert (tmp_path / "v.onnx.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["onnx", "deit_bsae"], "error: unknown model 'deit_bsae'; did you mean deit_base"),
        (["onnx", "test_vit", "--checkpoint", "absent.pth"], "error: checkpoint not found: absent.pth"),
        (["onnx", "test_vit", "--opset", "9"], "error: opset 9 is not supported"),
        (["onnx", "test_vit", "--output", "/proc/forbidden/x.onnx"], "error: cannot create output folder"),
        (["onnx", "test_vit", "--heads", "both"], "error: Invalid value for '--heads' / '--head': 'both'"),
        (["onnx", "test_vit", "--img-size", "-16"], "error: --img-size must be 16..2048 pixels, not -16"),
        (["onnx", "test_vit", "--img-size", "100000"], "error: --img-size must be 16..2048 pixels, not 100000"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    result = subprocess.run([*VITEXPORT, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_mismatched_checkpoint_error(tmp_path):
    torch.save({"model": {"head.weight": torch.zeros(3, 3)}}, tmp_path / "bad.pth")
    result = subprocess.run(
        [*VITEXPORT, "onnx", "test_vit", "--checkpoint", "bad.pth"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "missing cls_token" in result.stderr and "mis-shaped head.weight (3, 3) vs (1000, 64)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_deit_small_from_a_timm_state_dict_matches_timm(timm, tmp_path):
    """The issue's acceptance check, through the real console entry point."""
    reference = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "deit_small.pth")
    result = subprocess.run(
        [*VITEXPORT, "onnx", "deit_small", "--checkpoint", "deit_small.pth", "--output", "x.onnx"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("x.onnx")
    session = ort_session(tmp_path / "x.onnx")
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            expected = reference(x).numpy()
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    """An fp32 test_vit export whose sidecar knows its checkpoint's hash."""
    folder = tmp_path_factory.mktemp("validate")
    torch.save(create_model("test_vit").state_dict(), folder / "vit.pth")
    return export_onnx("test_vit", folder / "vit.onnx", checkpoint=folder / "vit.pth", validate=False)


def _described_as(artifact, path, **changes):
    """A copy of the artifact's graph whose sidecar describes it with `changes`."""
    shutil.copy(artifact.path, path)
    artifact.with_(path=path, **changes).save()
    return path


def _one_line_failure(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "test_deit"}, "model test_deit vs test_vit"),
        ({"input_size": 96}, "input size 96 vs 64"),
        (
            {"output_names": ("logits", "logits_cls", "logits_dist")},
            "outputs logits, logits_cls, logits_dist vs logits",
        ),
        ({"checkpoint_sha256": "0" * 64}, "checkpoint sha256 000000000000... vs"),
    ],
)
def test_validate_refuses_a_reference_of_another_model(vit_onnx, tmp_path, changes, message):
    if "input_size" in changes:
        changes = {"preprocess": replace(vit_onnx.preprocess, input_size=changes["input_size"])}
    reference = _described_as(vit_onnx, tmp_path / "ref.onnx", **changes)
    result = runner.invoke(app, ["validate", str(vit_onnx.path), "--reference", str(reference)])
    _one_line_failure(result, f"{reference} is not the model {vit_onnx.path} was derived from: {message}")


def test_validate_compares_checkpoints_only_when_both_sides_know_them(vit_onnx, tmp_path):
    reference = _described_as(vit_onnx, tmp_path / "ref.onnx", checkpoint_sha256=None)
    result = runner.invoke(app, ["validate", str(vit_onnx.path), "--reference", str(reference), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]


def test_validate_against_an_openvino_reference(vit_onnx, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from vitexport.export.optimize import Precision, Runtime, optimize

    reference = optimize(vit_onnx, runtime=Runtime.openvino, precision=Precision.fp32, output=tmp_path / "ref.xml")
    result = runner.invoke(app, ["validate", str(vit_onnx.path), "--reference", str(reference.path)])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)  # a relative name without a folder: still a file, not a registered model
    result = runner.invoke(app, ["validate", str(vit_onnx.path), "--reference", "absent.xml"])
    _one_line_failure(result, "error: no such file: absent.xml")


def test_validate_refuses_a_pytorch_reference_of_another_input_size(vit_onnx, tmp_path):
    candidate = _described_as(vit_onnx, tmp_path / "v96.onnx", preprocess=replace(vit_onnx.preprocess, input_size=96))
    checkpoint = vit_onnx.path.with_name("vit.pth")
    result = runner.invoke(
        app, ["validate", str(candidate), "--reference", "test_vit", "--checkpoint", str(checkpoint)]
    )
    _one_line_failure(result, "takes 96px inputs, test_vit 64px: give its fp32 ONNX export as --reference")
