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


# --- the sidecar's schema version --------------------------------------------------------------------------------


def test_every_sidecar_carries_the_schema_version_and_one_without_it_is_schema_1(tmp_path):
    from vitexport.artifacts import SCHEMA_VERSION

    _artifact(tmp_path).save()
    written = json.loads((tmp_path / "m.plan.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 3
    del written["schema_version"]  # as vitexport 0.1 wrote it
    (tmp_path / "m.plan.json").write_text(json.dumps(written))
    assert load_artifact(tmp_path / "m.plan").model == "test_vit"


def test_a_sidecar_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    from vitexport.artifacts import SCHEMA_VERSION

    _artifact(tmp_path).save()
    newer = json.loads((tmp_path / "m.plan.json").read_text()) | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "m.plan.json").write_text(json.dumps(newer))
    with pytest.raises(ArtifactError) as refused:
        load_artifact(tmp_path / "m.plan")
    message = str(refused.value)
    assert "\n" not in message
    assert message.endswith(f"was written by a newer vitexport (schema {SCHEMA_VERSION + 1}); upgrade")


# --- the sidecar records its files; load_artifact checks them ----------------------------------------------------


def test_the_sidecar_records_the_files_and_a_change_is_refused(tmp_path):
    import hashlib

    _artifact(tmp_path).save()
    files = json.loads((tmp_path / "m.plan.json").read_text())["files"]
    assert files == {"m.plan": {"size": 6, "sha256": hashlib.sha256(b"engine").hexdigest()}}
    assert load_artifact(tmp_path / "m.plan").files == files
    (tmp_path / "m.plan").write_bytes(b"engin")
    with pytest.raises(ArtifactError, match=r"^m\.plan does not match its sidecar \(size 5 != 6\): it changed after"):
        load_artifact(tmp_path / "m.plan")
    (tmp_path / "m.plan").write_bytes(b"enGine")
    with pytest.raises(ArtifactError, match=r"does not match its sidecar \(sha256 "):
        load_artifact(tmp_path / "m.plan")


def test_a_sidecar_without_files_still_loads(tmp_path):
    """Sidecars of older vitexports have no record: they load, unverified."""
    old = _artifact(tmp_path).to_dict()
    assert old.pop("files") is None
    (tmp_path / "m.plan.json").write_text(json.dumps(old))
    assert load_artifact(tmp_path / "m.plan").files is None


def test_a_listed_companion_that_changed_or_went_is_refused(tmp_path):
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"weights")
    ModelArtifact(tmp_path / "m.xml", "openvino", "test_vit", PreprocessConfig(64), 1000).save()
    assert set(load_artifact(tmp_path / "m.xml").files) == {"m.xml", "m.bin"}
    (tmp_path / "m.bin").write_bytes(b"other weights")
    with pytest.raises(ArtifactError, match=r"^m\.bin does not match its sidecar"):
        load_artifact(tmp_path / "m.xml")
    (tmp_path / "m.bin").unlink()
    with pytest.raises(ArtifactError, match=r"m\.bin, listed in m\.xml\.json, is missing"):
        load_artifact(tmp_path / "m.xml")


def test_hashes_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    from vitexport import artifacts

    _artifact(tmp_path).save()
    hashed = []
    real = artifacts.hashlib.sha256
    monkeypatch.setattr(artifacts.hashlib, "sha256", lambda: hashed.append(1) or real())
    for _ in range(3):
        load_artifact(tmp_path / "m.plan")
    assert hashed == []  # hashed once, by save; loads only stat the file
    (tmp_path / "m.plan").write_bytes(b"ENGINE")
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "m.plan")
    assert hashed == [1]


@pytest.mark.parametrize("path", ["../m.plan", "/etc/passwd", "sub/m.plan", "..", ""])
def test_the_model_file_must_be_beside_its_sidecar(tmp_path, path):
    d = _artifact(tmp_path).to_dict() | {"path": path}
    (tmp_path / "m.plan.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="a sidecar lists only file names in its own folder"):
        load_artifact(tmp_path / "m.plan.json")


def test_a_listed_file_may_not_be_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "secret").write_bytes(b"engine")
    folder = tmp_path / "artifacts"
    folder.mkdir()
    (folder / "m.plan").symlink_to(tmp_path / "secret")
    ModelArtifact(folder / "m.plan", "tensorrt", "test_vit", PreprocessConfig(64), 1000).save()
    with pytest.raises(ArtifactError, match="is a link out of its folder"):
        load_artifact(folder / "m.plan")


def test_onnx_external_data_is_recorded_and_may_not_leave_the_folder(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph)
    onnx.save_model(model, tmp_path / "g.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    artifact = ModelArtifact(tmp_path / "g.onnx", "onnx", "test_vit", PreprocessConfig(64), 4)
    artifact.save()
    assert set(load_artifact(tmp_path / "g.onnx").files) == {"g.onnx", "weights.bin"}
    for entry in model.graph.initializer[0].external_data:  # a graph whose weights sit outside its folder
        if entry.key == "location":
            entry.value = "../weights.bin"
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match=r"keeps weights in '\.\./weights\.bin': external data must be"):
        artifact.save()


# --- stages write in a staging folder ----------------------------------------------------------------------------


def test_staging_is_removed_whatever_happens_and_publish_writes_the_sidecar_last(tmp_path):
    from vitexport.artifacts import publish
    from vitexport.fileio import staging

    old = _artifact(tmp_path)
    old.save()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyboardInterrupt), staging(old.path) as staged:
        staged.write_bytes(b"half an engine")
        raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with staging(old.path) as staged:
        staged.write_bytes(b"new engine")
        published = publish(old.with_(path=staged), old.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan", "m.plan.json"]
    assert load_artifact(old.path) == published and published.files["m.plan"]["size"] == 10


def test_staging_of_a_dead_writer_is_removed_and_a_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from vitexport.fileio import staging

    writer = subprocess.Popen([sys.executable, "-c", "pass"])
    writer.wait()
    dead, live = tmp_path / f".staging-{writer.pid}-m.plan.x", tmp_path / f".staging-{os.getpid()}-m.plan.y"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "m.plan").write_bytes(b"half")
    with staging(tmp_path / "m.plan"):
        pass
    assert not dead.exists() and live.exists()


def test_user_files_are_read_only_when_regular_and_bounded(tmp_path):
    """fileio's one way to read a file a user named: a FIFO, a device or a folder is one line by its type (a FIFO's
    open would block, /dev/zero never ends), a file past the bound is not read further."""
    import os

    from vitexport.errors import VitExportError
    from vitexport.fileio import check_user_file, read_user_file, read_user_text

    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a folder")):
        with pytest.raises(VitExportError, match=f"labels {path} is {kind}: only regular files are read"):
            read_user_file(path, "labels", limit=10)
        with pytest.raises(ArtifactError, match=f"is {kind}"):
            check_user_file(path, "labels", error=ArtifactError)
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    assert read_user_text(tmp_path / "f.txt", "labels", limit=10) == "0123456789"
    with pytest.raises(VitExportError, match=r"labels .*f\.txt is over 9 bytes"):
        read_user_file(tmp_path / "f.txt", "labels", limit=9)
    (tmp_path / "f.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(VitExportError, match="is not UTF-8 text"):
        read_user_text(tmp_path / "f.txt", "labels", limit=10)
    with pytest.raises(VitExportError, match=r"cannot read labels .*absent: No such file"):
        read_user_file(tmp_path / "absent", "labels", limit=10)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_model_file_that_is_a_fifo_is_refused_by_its_type(tmp_path, recorded):
    """A FIFO in a model file's place: hashing it (a recorded sidecar) waited in open() for ever; an older sidecar,
    with no files recorded, loaded and left the hang to the next stage."""
    import os

    d = _artifact(tmp_path).to_dict()
    if recorded:
        d["files"] = {"m.plan": {"size": 0, "sha256": "0" * 64}}
    (tmp_path / "m.plan.json").write_text(json.dumps(d))
    (tmp_path / "m.plan").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "m.plan")
    error = _within(5, tmp_path / "m.plan", lambda: load_artifact(tmp_path / "m.plan"))
    assert isinstance(error, ArtifactError) and "m.plan is a FIFO: only regular files are read" in str(error), error


def _within(seconds, fifo, call):
    """What `call` raised, or a failure if it is still waiting on `fifo` after `seconds`: then a writer opens the
    FIFO, so that the blocked open returns and the test run goes on."""
    import threading

    raised = []

    def run():
        try:
            call()
        except Exception as e:
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with open(fifo, "wb"):
            pass
        thread.join(5)
        pytest.fail(f"waited in open() on the FIFO {fifo}")
    return raised[0] if raised else None
