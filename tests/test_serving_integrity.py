"""`serve` checks every model file against its version's sidecar before Triton loads it (issue 21: a valid ONNX copied
over <repo>/<model>/1/model.onnx was served; a truncated one ended in an ONNX Runtime traceback with paths)."""

import shutil

import pytest
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import ServingError
from vitexport.serving.integrity import verify_repository

runner = CliRunner()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A repository with test_vit (and its ensemble), and a valid ONNX file of another model."""
    from vitexport.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("integrity")
    repo = root / "model_repository"
    result = runner.invoke(app, ["repo", "test_vit", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    other = export_onnx("test_resnet", root / "other.onnx")
    return repo, other.path


@pytest.fixture
def repo(written, tmp_path):
    repo, _ = written
    copy = tmp_path / "model_repository"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


def test_a_repository_as_written_passes(repo):
    verify_repository(repo, ["test_vit", "test_vit_image", "test_vit_preprocess"])


@pytest.mark.parametrize("change", ["another valid ONNX", "truncated", "missing"])
def test_serve_refuses_a_changed_model_file_in_one_line(written, repo, change):
    model = repo / "test_vit" / "1" / "model.onnx"
    if change == "another valid ONNX":
        shutil.copyfile(written[1], model)
    elif change == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    else:
        model.unlink()
    # Through the ensemble too: serving test_vit_image loads test_vit.
    for models in (["test_vit"], ["test_vit_image"]):
        args = ["serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
        result = runner.invoke(app, [*args, *(f"--models={m}" for m in models)])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        assert lines[0].startswith(f"error: refusing to serve {model.parent}: "), lines[0]
        if change == "missing":
            assert f"{model}, which does not exist" in lines[0]
        else:
            assert "model.onnx does not match its sidecar" in lines[0] and "vitexport repo" in lines[0]
    with pytest.raises(ServingError, match=r"model\.onnx"):
        verify_repository(repo, ["test_vit"])
