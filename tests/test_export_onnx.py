import json

import numpy as np
import onnx
import pytest
import torch

from vitexport.artifacts import load_artifact
from vitexport.errors import ArtifactError, ExportError, ValidationError
from vitexport.export.onnx import DEFAULT_OPSET, Heads, export_onnx, validate_onnx
from vitexport.export.validate import Tolerance
from vitexport.models import create_model
from vitexport.ort import ort_session
from vitexport.weights import sha256_file


@pytest.fixture(scope="module")
def deit_export(tmp_path_factory):
    torch.manual_seed(0)
    source = create_model("test_deit_distilled")
    checkpoint = tmp_path_factory.mktemp("ckpt") / "deit.pth"
    torch.save(source.state_dict(), checkpoint)
    out = tmp_path_factory.mktemp("onnx") / "deit.onnx"
    return source, checkpoint, export_onnx("test_deit_distilled", out, checkpoint=checkpoint, heads=Heads.all)


def test_all_heads_match_pytorch_at_several_batch_sizes(deit_export):
    source, _, artifact = deit_export
    session = ort_session(artifact.path)
    assert [o.name for o in session.get_outputs()] == ["logits", "logits_cls", "logits_dist"]
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, 64, 64)
        logits, cls_logits, dist_logits = session.run(None, {"pixel_values": x.numpy()})
        with torch.inference_mode():
            ref_cls, ref_dist = source.forward_heads(x)
        np.testing.assert_allclose(cls_logits, ref_cls.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(dist_logits, ref_dist.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(logits, source(x).detach().numpy(), atol=1e-4, rtol=0)


def test_graph_has_dynamic_batch_metadata_and_passes_the_checker(deit_export):
    _, _, artifact = deit_export
    model = onnx.load(artifact.path)
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert model.graph.input[0].name == "pixel_values"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vitexport.model"] == "test_deit_distilled"
    assert json.loads(meta["vitexport.preprocess"])["input_size"] == 64
    assert meta["vitexport.opset"] == str(DEFAULT_OPSET)
    assert len(meta["vitexport.checkpoint_sha256"]) == 64
    assert any(o.domain == "" and o.version == DEFAULT_OPSET for o in model.opset_import)


def test_sidecar_describes_the_artifact(deit_export):
    _, _, artifact = deit_export
    loaded = load_artifact(artifact.path)
    assert loaded == artifact
    assert loaded.validation["passed"]
    assert {r["batch_size"] for r in loaded.validation["reports"]} == {1, 4}
    assert all(r["max_abs"] < 1e-4 for r in loaded.validation["reports"])
    assert load_artifact(artifact.sidecar).path == artifact.path


def test_fixed_batch_and_opset_23_with_the_onnx_attention_op(tmp_path):
    artifact = export_onnx("test_vit", tmp_path / "vit.onnx", batch_size=3, opset=23)
    model = onnx.load(artifact.path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops  # one per block
    assert artifact.validation["reports"][0]["batch_size"] == 3


def test_explicit_attention_keeps_softmax_with_scaled_q(tmp_path):
    artifact = export_onnx("test_vit", tmp_path / "vit.onnx", attention="explicit")
    ops = [n.op_type for n in onnx.load(artifact.path).graph.node]
    assert ops.count("Softmax") == 2 and "Attention" not in ops


def test_resnet_export(tmp_path):
    artifact = export_onnx("test_resnet", tmp_path / "resnet.onnx")
    assert artifact.validation["passed"]
    ops = {n.op_type for n in onnx.load(artifact.path).graph.node}
    assert "Conv" in ops


def test_large_models_use_external_data(tmp_path):
    artifact = export_onnx("test_vit", tmp_path / "vit.onnx", external_data_threshold=0)
    data = tmp_path / "vit.onnx.data"
    assert data.stat().st_size > artifact.path.stat().st_size
    assert artifact.validation["passed"]  # ONNX Runtime found the weights beside the graph


def test_validation_fails_on_drift(deit_export):
    _, _, artifact = deit_export
    torch.manual_seed(1)
    other = create_model("test_deit_distilled")  # other random weights: a wrong reference
    with pytest.raises(ValidationError, match=r"logits at batch 1: max abs diff .* > 0\.0001"):
        validate_onnx(artifact, _heads(other))
    with pytest.raises(ValidationError, match="cosine"):
        validate_onnx(artifact, _heads(other), tolerance=Tolerance(max_abs=1e9, min_cosine=0.9999999))


def _heads(model):
    from vitexport.export.onnx import _ExportHeads

    return _ExportHeads(model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opset": 12}, "opset 12 is not supported; choose 18-23"),
        ({"heads": Heads.all}, "--heads all needs a distilled model"),
        ({"batch_size": 0}, "batch size must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_onnx("test_vit", tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot create output folder"):
        export_onnx("test_vit", blocker / "sub" / "x.onnx")
    with pytest.raises(ExportError, match="is a directory"):
        export_onnx("test_vit", tmp_path)


def test_pretrained_export_records_the_downloaded_checkpoint(tmp_path, monkeypatch):
    weights = tmp_path / "hub" / "model.pth"
    weights.parent.mkdir()
    torch.save(create_model("test_vit").state_dict(), weights)
    downloads = []

    def download(spec):  # stands in for the Hub: test_vit has no published weights
        downloads.append(spec.name)
        return weights

    monkeypatch.setattr("vitexport.weights.download_pretrained", download)
    artifact = export_onnx("test_vit", tmp_path / "vit.onnx", pretrained=True)
    assert downloads == ["test_vit"]
    assert artifact.checkpoint_sha256 == sha256_file(weights)
    assert load_artifact(artifact.path).checkpoint_sha256 == sha256_file(weights)
    metadata = {p.key: p.value for p in onnx.load(artifact.path).metadata_props}
    assert metadata["vitexport.checkpoint_sha256"] == sha256_file(weights)


def test_shape_inference_failure_is_one_line(tmp_path, monkeypatch):
    """full_check's shape inference raises InferenceError, which is no ValidationError: it must not escape."""
    add = onnx.helper.make_node("Add", ["a", "b"], ["c"])
    value = onnx.helper.make_tensor_value_info
    FLOAT = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [add], "g", [value("a", FLOAT, [2]), value("b", FLOAT, [3])], [value("c", FLOAT, [2])]
    )
    mismatched = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    real_check = onnx.checker.check_model
    # The real checker, on a graph whose shapes disagree, in place of the exported one.
    monkeypatch.setattr(onnx.checker, "check_model", lambda *_, **kw: real_check(mismatched, **kw))
    with pytest.raises(ExportError, match=r"onnx.checker rejected the exported graph: .*Incompatible dimensions"):
        export_onnx("test_vit", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx.json").exists()


def test_missing_sidecar(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="no artifact sidecar"):
        load_artifact(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "absent.onnx")
