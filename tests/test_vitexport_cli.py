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
    heavy = ("torch", "onnx", "onnxruntime", "openvino", "tritonclient")
    probe = f"import sys, vitexport.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    result = subprocess.run([*VITEXPORT, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "onnx" in result.stdout
    assert time.perf_counter() - start < 10


def test_version_prints_the_one_version_and_exits_0():
    import vitexport

    result = subprocess.run([*VITEXPORT, "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"vitexport {vitexport.__version__}\n"
    assert runner.invoke(app, ["--version"]).stdout == result.stdout


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
        (["onnx", "test_vit", "--img-size", "17"], "error: --img-size must be a multiple of test_vit's patch size"),
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


@pytest.mark.integration  # a full-size export through a subprocess
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


# --- artifacts are what their sidecars say (issue 12) ------------------------------------------------------------


def _no_traceback(result, message: str) -> None:
    """One line on stderr, exit 1, and no exception escaped the command."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    _one_line_failure(result, message)


def _changed(artifact, folder, how: str):
    """A copy of the artifact, its sidecar written for it, then its model file truncated or replaced."""
    path = _described_as(artifact, folder / "m.onnx", validation={"passed": True})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else data[::-1])  # replaced: same size
    return path


@pytest.mark.parametrize("how", ["truncated", "replaced"])
@pytest.mark.parametrize("command", ["repo", "optimize", "validate"])
def test_a_model_file_changed_after_export_is_refused(vit_onnx, tmp_path, how, command):
    path = _changed(vit_onnx, tmp_path, how)
    args = {
        "repo": ["repo", str(path), "--repo", str(tmp_path / "repo")],
        "optimize": ["optimize", str(path), "--output", str(tmp_path / "v.onnx")],
        "validate": ["validate", str(path), "--reference", str(vit_onnx.path)],
    }[command]
    difference = "size" if how == "truncated" else "sha256"
    _no_traceback(runner.invoke(app, args), f"error: m.onnx does not match its sidecar ({difference} ")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "v.onnx").exists()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_export_leaves_the_previous_pair(vit_onnx, tmp_path, monkeypatch, interruption):
    """Ctrl-C (or a crash) during validation: the earlier export and its "passed" sidecar stay, nothing else."""
    from vitexport.artifacts import load_artifact
    from vitexport.export import onnx as onnx_stage

    path = _described_as(vit_onnx, tmp_path / "test_vit.onnx", validation={"passed": True})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupt(*args, **kwargs):
        raise interruption("stopped during validation")

    monkeypatch.setattr(onnx_stage, "validate_onnx", interrupt)
    result = runner.invoke(app, ["onnx", "test_vit", "--output", str(path)])
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .staging-*, no new file
    assert load_artifact(path).passed_gate


def test_an_optimize_whose_gate_fails_leaves_the_previous_variant(vit_onnx, tmp_path, monkeypatch):
    from vitexport.errors import ValidationError
    from vitexport.export import optimize as optimize_stage

    output = tmp_path / "v.onnx"
    first = runner.invoke(app, ["optimize", str(vit_onnx.path), "--output", str(output), "--json"])
    assert first.exit_code == 0, first.output
    assert set(json.loads(first.stdout)["files"]) == {"v.onnx"}  # the sidecar records the file it was written for
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_gate(*args, **kwargs):
        raise ValidationError("over budget")

    monkeypatch.setattr(optimize_stage, "gate", failing_gate)
    _no_traceback(runner.invoke(app, ["optimize", str(vit_onnx.path), "--output", str(output)]), "over budget")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/passwd", "sub/m.onnx"])
def test_a_sidecar_naming_a_file_outside_its_folder_is_refused(vit_onnx, tmp_path, path):
    """Otherwise `repo` copies whatever readable file the sidecar names into the repository."""
    folder = tmp_path / "artifacts"
    (folder / "sub").mkdir(parents=True)
    for target in (tmp_path / "outside.onnx", folder / "sub" / "m.onnx"):
        shutil.copy(vit_onnx.path, target)
    sidecar = folder / "evil.onnx.json"
    sidecar.write_text(json.dumps(vit_onnx.to_dict() | {"path": path, "validation": {"passed": True}}))
    result = runner.invoke(app, ["repo", str(sidecar), "--repo", str(tmp_path / "repo")])
    _no_traceback(result, f"names {path!r}: a sidecar lists only file names in its own folder")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_classes": 10}, "does not match its sidecar: output width 1000, the sidecar says 10"),
        ({"input_size": 96}, "does not match its sidecar: input size 64, the sidecar says 96"),
        ({"input_name": "image"}, "does not match its sidecar: input pixel_values, the sidecar says image"),
        ({"output_names": ("probs",)}, "has no output 'probs'; it has logits"),
        ({"not_onnx": True}, "error: cannot read lies.onnx"),
    ],
)
def test_optimize_of_an_artifact_whose_sidecar_lies(vit_onnx, tmp_path, changes, message):
    if "input_size" in changes:
        changes = {"preprocess": replace(vit_onnx.preprocess, input_size=changes["input_size"])}
    path = tmp_path / "lies.onnx"
    if changes.pop("not_onnx", False):
        path.write_text("not a graph\n")  # format onnx, for a text file: the sidecar's hash is the text's
        vit_onnx.with_(path=path).save()
    else:
        _described_as(vit_onnx, path, **changes)
    result = runner.invoke(app, ["optimize", str(path), "--output", str(tmp_path / "v.onnx")])
    _no_traceback(result, message)


def test_a_zero_byte_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    result = subprocess.run(
        [*VITEXPORT, "onnx", "deit_tiny", "--checkpoint", "empty.pth"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == "error: cannot read checkpoint empty.pth: it is empty (0 bytes); download or save it again"
    )


def _read_only(folder):
    """Make `folder` unwritable, also for root (chmod does not stop root: the immutable attribute does); the undo."""
    import os

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no way to make a folder read-only")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_repo_into_a_read_only_repository_is_one_line(vit_onnx, tmp_path):
    path = _described_as(vit_onnx, tmp_path / "m.onnx", validation={"passed": True})
    repo = tmp_path / "repo"
    repo.mkdir()
    undo = _read_only(repo)
    try:
        result = subprocess.run([*VITEXPORT, "repo", str(path), "--repo", str(repo)], capture_output=True, text=True)
    finally:
        undo()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: cannot write {repo}/test_vit: ") and len(result.stderr.splitlines()) == 1
    assert not list(repo.iterdir())
