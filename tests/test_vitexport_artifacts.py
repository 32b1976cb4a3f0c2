"""Sidecars: typed fields round-trip, and sidecars written before them (with the values in `details`) still load."""

from __future__ import annotations

import json

import pytest

from vitexport.artifacts import Format, ModelArtifact, Precision, load_artifact
from vitexport.errors import ArtifactError
from vitexport.preprocess import PreprocessConfig


def _artifact(tmp_path, **changes) -> ModelArtifact:
    (tmp_path / "m.plan").write_bytes(b"engine")
    return ModelArtifact(tmp_path / "m.plan", "tensorrt", "test_vit", PreprocessConfig(64), 1000, **changes)


def test_typed_fields_round_trip(tmp_path):
    saved = _artifact(tmp_path, precision="fp16", batch_profile=[1, 8, 32], compute_capability="8.9")
    saved.save()
    loaded = load_artifact(tmp_path / "m.plan")
    assert loaded.format is Format.tensorrt and loaded.precision is Precision.fp16
    assert loaded.batch_profile == (1, 8, 32) and loaded.compute_capability == "8.9"
    assert json.loads(saved.sidecar.read_text())["precision"] == "fp16"  # the file format is unchanged
    assert f"{loaded.precision} {loaded.format}" == "fp16 tensorrt"  # messages show values, not enum names


def test_a_sidecar_with_the_values_in_details_still_loads(tmp_path):
    old = _artifact(tmp_path).to_dict()
    for typed in ("fuse_attention", "io_type", "quant_method", "batch_profile", "compute_capability", "gate_failure"):
        old.pop(typed)
    old["details"] = {
        "fuse_attention": "onnx",
        "io_type": "fp16",
        "quantization": {"method": "static", "calibration_images": 8},
        "profile": {"min": 1, "opt": 4, "max": 16},
        "compute_capability": "9.0",
        "gate_failure": "failed its accuracy gate",
    }
    (tmp_path / "m.plan.json").write_text(json.dumps(old))
    loaded = load_artifact(tmp_path / "m.plan")
    assert (loaded.fuse_attention, loaded.io_type, loaded.quant_method) == ("onnx", Precision.fp16, "static")
    assert (loaded.batch_profile, loaded.compute_capability) == ((1, 4, 16), "9.0")
    assert loaded.gate_failure == "failed its accuracy gate"


def test_an_unknown_precision_is_a_malformed_sidecar(tmp_path):
    d = _artifact(tmp_path).to_dict() | {"precision": "int4"}
    (tmp_path / "m.plan.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="malformed"):
        load_artifact(tmp_path / "m.plan")
