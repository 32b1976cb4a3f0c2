"""The repository writer: layout, labels, versions that are staged and renamed, never clobbered, and names that
cannot escape the repository. Model files here are placeholders: the writer copies them without reading them."""

import json
import shutil
from pathlib import Path

import pytest

from vitexport.artifacts import ModelArtifact, load_artifact
from vitexport.errors import ServingError
from vitexport.models import get_spec
from vitexport.serving import config as cfg
from vitexport.serving import repository
from vitexport.serving.config import Batching, ServingBackend
from vitexport.serving.repository import add_model, check_name, scan
from vitexport.tasks import task_of

FEATURES_CHANGES = {"output_names": ("embeddings",), "num_classes": 64, "task": "features"}  # an embedding model


def make_artifact(tmp_path: Path, fmt="onnx", name="test_vit", file="model.onnx", **changes) -> ModelArtifact:
    spec = get_spec(name)
    path = tmp_path / "artifacts" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder " + file.encode())
    artifact = ModelArtifact(path=path, format=fmt, model=spec.name, preprocess=spec.preprocess, num_classes=1000)
    artifact = artifact.with_(**({"validation": {"passed": True}} | changes))
    artifact.save()
    return load_artifact(path)  # through the sidecar, as the CLI gets it


def test_layout_labels_and_ensemble(tmp_path):
    repo = tmp_path / "repo"
    added = add_model(repo, make_artifact(tmp_path), batching=Batching(8, (4,), 2000))
    assert added.name == "test_vit" and added.version == 1 and added.path == repo / "test_vit" / "1"
    assert added.models == ("test_vit", "test_vit_preprocess", "test_vit_postprocess", "test_vit_image")
    assert sorted(p.name for p in added.path.iterdir()) == ["model.onnx", "model.onnx.json", "model.py"]
    labels = (repo / "test_vit" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0].startswith("tench") and labels[-1].startswith("toilet tissue")
    assert (repo / "test_vit_postprocess" / "labels.txt").read_text() == (repo / "test_vit" / "labels.txt").read_text()
    assert (repo / "test_vit_image" / "1").is_dir()  # an ensemble needs a (empty) version folder
    configs = scan(repo)  # every written config parses
    assert set(configs) == set(added.models)
    assert configs["test_vit"].dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.parameter(configs["test_vit"], "runtime") == "onnxruntime"
    assert not list(repo.rglob(".staging-*"))
    copied = load_artifact(added.path / "model.onnx")  # the version folder is a loadable artifact itself
    assert copied.model == "test_vit" and copied.path == added.path / "model.onnx"


def test_staging_left_by_a_killed_writer_is_cleaned(tmp_path):
    """A `repo` SIGKILLed mid-write leaves its .staging-<pid>-* folder (hundreds of MB for a large model); the next
    write to the model removes it, and leaves a live writer's (another `repo` running now) alone."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path), ensemble=False)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    writer.kill()
    writer.wait()  # a writer that was killed: its pid is gone
    dead = repo / "test_vit" / f".staging-{writer.pid}-abc123"
    live = repo / "test_vit" / f".staging-{os.getpid()}-def456"
    for folder in (dead, live):
        (folder / "version").mkdir(parents=True)
        (folder / "version" / "model.onnx").write_bytes(b"half a model")
    add_model(repo, make_artifact(tmp_path, file="other.onnx"), ensemble=False)
    assert not dead.exists() and live.exists()
    assert repository.versions(repo / "test_vit") == [1, 2]


def test_new_versions_never_clobber(tmp_path):
    repo = tmp_path / "repo"
    first = add_model(repo, make_artifact(tmp_path), ensemble=False)
    before = (first.path / "model.onnx").read_bytes()
    second = add_model(repo, make_artifact(tmp_path, file="other.onnx"), ensemble=False)
    assert (first.version, second.version) == (1, 2)
    assert (first.path / "model.onnx").read_bytes() == before
    with pytest.raises(ServingError, match="never overwritten"):
        add_model(repo, make_artifact(tmp_path, file="third.onnx"), version=1, ensemble=False)
    assert (first.path / "model.onnx").read_bytes() == before
    assert add_model(repo, make_artifact(tmp_path), version=7, ensemble=False).version == 7
    assert repository.versions(repo / "test_vit") == [1, 2, 7]


def test_a_failed_write_leaves_no_version_and_no_staging(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    artifact = make_artifact(tmp_path)
    real_copy = shutil.copyfile

    def copy_then_fail(src, dst):
        # While the files are copied, the version must not be visible yet: it appears only by the final rename.
        assert not (repo / "test_vit" / "1").exists()
        if Path(dst).name == "model.py":
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)
    with pytest.raises(ServingError, match="No space left"):
        add_model(repo, artifact, ensemble=False)
    assert repository.versions(repo / "test_vit") == []
    assert not list(repo.rglob(".staging-*"))


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_a_failed_ensemble_part_takes_back_the_whole_version(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path))
    before = _snapshot(repo)
    real_copy = shutil.copyfile

    def fail_on_preprocessing(src, dst):
        if Path(dst).name == "model.py" and Path(src).name == "preprocess_model.py":
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", fail_on_preprocessing)
    with pytest.raises(ServingError, match="No space left"):
        add_model(repo, make_artifact(tmp_path, file="v2.onnx"), instances=2)
    # The classifier's version 2 (written first) and its new config are gone again: the ensemble's parts agree.
    assert _snapshot(repo) == before
    assert not list(repo.rglob(".staging-*"))


def test_config_and_labels_change_only_once_the_version_exists(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path), ensemble=False)
    before = _snapshot(repo)
    real_rename = Path.rename

    def rename_fails(self, target):
        if Path(target).name.isdigit():
            raise OSError(122, "Disk quota exceeded")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_fails)
    with pytest.raises(ServingError, match="Disk quota exceeded"):
        add_model(repo, make_artifact(tmp_path, file="v2.onnx"), instances=3, ensemble=False)
    assert _snapshot(repo) == before  # config.pbtxt still says one instance, and describes version 1 only
    with pytest.raises(ServingError, match="Disk quota exceeded"):
        add_model(repo, make_artifact(tmp_path), name="fresh", ensemble=False)
    assert not (repo / "fresh").exists()  # no config.pbtxt without a version, not even an empty model folder


def test_artifacts_that_did_not_pass_their_gate_are_refused(tmp_path):
    for validation in (None, {"passed": False}, {"reports": []}):
        artifact = make_artifact(tmp_path, file="ungated.onnx", validation=validation)
        with pytest.raises(ServingError, match=r"ungated\.onnx has not passed its accuracy gate"):
            add_model(tmp_path / "repo", artifact)
    assert not (tmp_path / "repo" / "test_vit").exists()
    engine = make_artifact(tmp_path, "tensorrt", file="e.plan", batch_profile=(1, 4, 8))
    unchecked = make_artifact(tmp_path, "tensorrt", file="u.plan", validation=None, batch_profile=(1, 4, 8))
    with pytest.raises(ServingError, match=r"u\.plan has not passed"):
        add_model(tmp_path / "repo", unchecked, ensemble=False)
    assert add_model(tmp_path / "repo", engine, ensemble=False).version == 1


def test_a_smaller_max_batch_must_not_break_the_existing_ensemble(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path), batching=Batching(8))
    with pytest.raises(ServingError, match="ensemble test_vit_image in the repository batches up to 8"):
        add_model(repo, make_artifact(tmp_path), batching=Batching(4), ensemble=False)
    assert repository.versions(repo / "test_vit") == [1]
    add_model(repo, make_artifact(tmp_path), batching=Batching(16), ensemble=False)  # larger is fine
    added = add_model(repo, make_artifact(tmp_path), batching=Batching(4))  # the ensemble is written with it
    assert {n: c.max_batch_size for n, c in scan(repo).items()} == dict.fromkeys(added.models, 4)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/etc/x", ".hidden", "..", "a..b", "", "x" * 101, "sp ace"])
def test_names_that_escape_or_are_unsafe_are_refused(tmp_path, name):
    with pytest.raises(ServingError, match="model name"):
        add_model(tmp_path / "repo", make_artifact(tmp_path), name=name)
    assert not (tmp_path / "evil").exists()


def test_a_symlink_out_of_the_repository_is_refused(tmp_path):
    repo = tmp_path / "repo"
    (tmp_path / "outside").mkdir()
    repo.mkdir()
    (repo / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(ServingError, match="outside the repository"):
        check_name(repo, "linked")
    with pytest.raises(ServingError, match="outside the repository"):
        add_model(repo, make_artifact(tmp_path), name="linked")
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_repository_written_before_input_formats_and_probabilities_takes_a_new_version(tmp_path):
    """Configs as vitexport 0.1 wrote them (no input format; the classifier's ensemble answering its top k as labels,
    scores and indices): the next version writes them again, with the format and the ensemble of this vitexport."""
    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path))
    top_k = [("labels", cfg.pb.TYPE_STRING), ("scores", cfg.pb.TYPE_FP32), ("indices", cfg.pb.TYPE_INT64)]
    for name, config in scan(repo).items():
        for tensor in config.input:
            tensor.ClearField("format")
        if name in ("test_vit_postprocess", "test_vit_image"):
            del config.output[:]
            config.output.extend(cfg.pb.ModelOutput(name=n, data_type=t, dims=[5]) for n, t in top_k)
        (repo / name / "config.pbtxt").write_text(cfg.render(config))
    assert add_model(repo, make_artifact(tmp_path)).version == 2
    configs = scan(repo)
    assert configs["test_vit"].input[0].format == cfg.pb.ModelInput.FORMAT_NCHW
    assert [o.name for o in configs["test_vit_image"].output] == ["probabilities"]
    assert [o.name for o in configs["test_vit_postprocess"].output] == ["probabilities"]


def test_a_new_version_cannot_change_what_the_model_is(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, make_artifact(tmp_path), ensemble=False)
    with pytest.raises(ServingError, match=r"different (platform|backend)"):
        add_model(repo, make_artifact(tmp_path), backend=ServingBackend.onnxruntime, ensemble=False)
    with pytest.raises(ServingError, match="different output"):
        add_model(repo, make_artifact(tmp_path, file="r.onnx", num_classes=10), ensemble=False)
    assert repository.versions(repo / "test_vit") == [1]


def test_onnx_external_data_travels_with_the_model(tmp_path):
    artifact = make_artifact(tmp_path, file="big.onnx")
    artifact.path.with_name("big.onnx.data").write_bytes(b"weights")
    artifact = load_artifact(artifact.save())  # a stage writes the sidecar after the weights: it records them
    assert set(artifact.files) == {"big.onnx", "big.onnx.data"}
    added = add_model(tmp_path / "repo", artifact, ensemble=False)
    assert (added.path / "big.onnx.data").read_bytes() == b"weights"  # the graph refers to it by this name
    assert load_artifact(added.path / "model.onnx").files["big.onnx.data"] == artifact.files["big.onnx.data"]


def test_tensorrt_engines_one_per_compute_capability(tmp_path):
    profile = {"min": 1, "opt": 4, "max": 16}
    engines = [
        make_artifact(
            tmp_path, "tensorrt", file=f"e{cc}.plan", batch_profile=tuple(profile.values()), compute_capability=cc
        )
        for cc in ("8.0", "8.9")
    ]
    added = add_model(tmp_path / "repo", engines, backend=ServingBackend.tensorrt, ensemble=False)
    config = cfg.read_config(tmp_path / "repo" / "test_vit")
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert dict(config.cc_model_filenames) == {"8.0": "model.8.0.plan", "8.9": "model.8.9.plan"}
    assert (added.path / "model.8.9.plan").read_bytes() == b"placeholder e8.9.plan"
    single = add_model(tmp_path / "repo", engines[0], backend=ServingBackend.tensorrt, name="one", ensemble=False)
    assert (single.path / "model.plan").exists()
    with pytest.raises(ServingError, match="distinct compute capabilities"):
        add_model(tmp_path / "repo", [engines[0], engines[0]], backend=ServingBackend.tensorrt, name="dup")
    with pytest.raises(ServingError, match="only accepted for --backend tensorrt"):
        add_model(tmp_path / "repo", [make_artifact(tmp_path)] * 2, name="two")
    no_profile = make_artifact(tmp_path, "tensorrt", file="x.plan")
    with pytest.raises(ServingError, match="optimization profile"):
        add_model(tmp_path / "repo", no_profile, backend=ServingBackend.tensorrt, name="np")


def test_openvino_ir_needs_its_weights(tmp_path):
    ir = make_artifact(tmp_path, "openvino", file="m.xml")
    with pytest.raises(ServingError, match="no weights file"):
        add_model(tmp_path / "repo", ir, backend=ServingBackend.openvino, ensemble=False)
    ir.path.with_suffix(".bin").write_bytes(b"w")
    with pytest.raises(ServingError, match=r"does not record m\.bin"):  # weights added after the sidecar
        add_model(tmp_path / "repo", ir, backend=ServingBackend.openvino, ensemble=False)
    ir = load_artifact(ir.save())
    added = add_model(tmp_path / "repo", ir, backend=ServingBackend.openvino, ensemble=False)
    assert sorted(p.name for p in added.path.iterdir()) == ["model.bin", "model.xml", "model.xml.json"]
    assert set(load_artifact(added.path / "model.xml").files) == {"model.xml", "model.bin"}  # renamed, and verified


def test_the_default_backend_follows_the_artifact(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "m.bin").write_bytes(b"w")  # written with the .xml, before the sidecar records both
    ir = make_artifact(tmp_path, "openvino", file="m.xml", precision="bf16")
    added = add_model(tmp_path / "repo", ir, name="ov", ensemble=False)
    config = cfg.read_config(added.path.parent)
    assert added.backend is ServingBackend.python_openvino and cfg.parameter(config, "runtime") == "openvino"
    assert cfg.parameter(config, "precision") == "bf16"  # becomes OpenVINO's inference precision hint
    assert (
        add_model(tmp_path / "repo", make_artifact(tmp_path), ensemble=False).backend
        is ServingBackend.python_onnxruntime
    )


def test_non_imagenet_heads_get_index_labels(tmp_path):
    added = add_model(tmp_path / "repo", make_artifact(tmp_path, num_classes=10))
    assert (added.path.parent / "labels.txt").read_text().splitlines() == [f"class_{i}" for i in range(10)]


def test_fixed_batch_models_need_no_ensemble(tmp_path):
    artifact = make_artifact(tmp_path, batch_size=4)
    with pytest.raises(ServingError, match="dynamic-batch"):
        add_model(tmp_path / "repo", artifact)
    assert cfg.read_config(add_model(tmp_path / "repo", artifact, ensemble=False).path.parent).max_batch_size == 0


def test_embeddings_models_get_no_labels_and_an_ensemble_without_top_k(tmp_path):
    repo = tmp_path / "repo"
    artifact = make_artifact(tmp_path, num_classes=64, output_names=("embeddings",), task="features")
    added = add_model(repo, artifact)
    assert added.models == ("test_vit", "test_vit_preprocess", "test_vit_image")
    assert not list(repo.rglob("labels.txt")) and not (repo / "test_vit_postprocess").exists()
    configs = scan(repo)
    assert set(configs) == set(added.models)
    assert [(o.name, list(o.dims), o.label_filename) for o in configs["test_vit"].output] == [("embeddings", [64], "")]
    assert [s.model_name for s in configs["test_vit_image"].ensemble_scheduling.step] == [
        "test_vit_preprocess",
        "test_vit",
    ]
    assert [(o.name, list(o.dims)) for o in configs["test_vit_image"].output] == [("embeddings", [64])]
    # A classifier cannot become a new version of an embeddings model: the older versions would break.
    with pytest.raises(ServingError, match="different output"):
        add_model(repo, make_artifact(tmp_path, file="classifier.onnx"))
    assert repository.versions(repo / "test_vit") == [1]


@pytest.mark.parametrize(
    ("name", "size", "mean", "std"),
    [
        ("mobilevit_s", 256, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # pixels in [0, 1], 256 px
        ("swin_base_patch4_window12_384", 384, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ("beit_base_patch16_224", 224, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ],
)
def test_each_familys_preprocessing_reaches_its_ensemble(tmp_path, name, size, mean, std):
    added = add_model(tmp_path / "repo", make_artifact(tmp_path, name=name))
    configs = scan(tmp_path / "repo")
    assert list(configs[name].input[0].dims) == [3, size, size]
    assert list(configs[f"{name}_preprocess"].output[0].dims) == [3, size, size]
    served = json.loads(cfg.parameter(configs[f"{name}_preprocess"], "preprocess"))
    assert (served["input_size"], served["mean"], served["std"]) == (size, mean, std)
    assert added.models[-1] == f"{name}_image"


DETR = {"name": "test_detr", "output_names": ("logits", "pred_boxes"), "mask_name": "pixel_mask", "task": "detection"}


@pytest.mark.parametrize(
    ("changes", "models", "post_backend", "labels_beside"),
    [
        ({}, ("m", "m_preprocess", "m_postprocess", "m_image"), "topk_model.py", ["m", "m_image", "m_postprocess"]),
        (
            {"output_names": ("embeddings",), "num_classes": 64, "task": "features"},
            ("m", "m_preprocess", "m_image"),
            None,
            [],
        ),
        (
            {**DETR, "num_classes": 4},
            ("m", "m_preprocess", "m_postprocess", "m_image"),
            "detections_model.py",
            ["m_postprocess"],
        ),
    ],
    ids=["classification", "features", "detection"],
)
def test_each_task_gets_its_parts_backends_and_labels(tmp_path, changes, models, post_backend, labels_beside):
    repo = tmp_path / "repo"
    added = add_model(repo, make_artifact(tmp_path, **changes), name="m")
    assert added.models == models
    backends = Path(repository.__file__).parent / "backends"
    assert (added.path / "model.py").read_bytes() == (backends / "model_runner.py").read_bytes()  # every task's
    if post_backend:
        assert (repo / "m_postprocess" / "1" / "model.py").read_bytes() == (backends / post_backend).read_bytes()
    assert sorted(p.parent.name for p in repo.rglob("labels.txt")) == labels_beside
    configs = scan(repo)
    task = task_of(make_artifact(tmp_path, file="again.onnx", **changes))
    assert {cfg.task_of_config(configs[m]) for m in ("m", "m_image")} == {task}
    # The ensemble's steps are wired end to end: every step input is the ensemble's input or an earlier output.
    made = {"image"}
    for step in configs["m_image"].ensemble_scheduling.step:
        assert set(step.input_map.values()) <= made, step.model_name
        step_config = configs[step.model_name]
        assert set(step.input_map) == {i.name for i in step_config.input}
        assert set(step.output_map) <= {o.name for o in step_config.output}
        made |= set(step.output_map.values())
    assert {o.name for o in configs["m_image"].output} <= made


def test_a_score_threshold_only_where_the_post_processing_takes_one(tmp_path):
    for changes, task in (
        ({}, "classification"),
        (FEATURES_CHANGES, "features"),
    ):
        artifact = make_artifact(tmp_path, file="x.onnx", **changes)
        with pytest.raises(ServingError, match=rf"^a score threshold is for detectors; x\.onnx is a {task} model$"):
            add_model(tmp_path / "repo", artifact, threshold=0.5)
    detector = make_artifact(tmp_path, file="d.onnx", num_classes=4, **DETR)
    with pytest.raises(ServingError, match=r"^threshold must be in \[0, 1\), got 1\.5$"):
        add_model(tmp_path / "repo", detector, threshold=1.5, ensemble=False)  # checked with or without an ensemble
    assert not (tmp_path / "repo" / "test_detr").exists()
    add_model(tmp_path / "repo", detector, threshold=0.25, top_k=7)
    post = scan(tmp_path / "repo")["test_detr_postprocess"]
    assert (cfg.parameter(post, "threshold"), cfg.parameter(post, "top_k")) == ("0.25", "7")


def test_top_k_defaults_to_at_most_the_classes(tmp_path):
    add_model(tmp_path / "repo", make_artifact(tmp_path, num_classes=3))
    ensemble = scan(tmp_path / "repo")["test_vit_image"]
    # the 3 probabilities, which Triton's classification extension ranks; the client's default k: all 3
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("probabilities", [3])]
    assert cfg.parameter(ensemble, "top_k") == "3"
    with pytest.raises(ServingError, match=r"^top-k must be within 1\.\.3, got 4$"):
        add_model(tmp_path / "repo", make_artifact(tmp_path, num_classes=3), name="other", top_k=4)


def test_labels_are_the_artifacts_else_the_tasks_usual_classes_else_indices():
    from vitexport.serving.repository import labels_for
    from vitexport.tasks import CLASSIFICATION, DETECTION

    assert labels_for(1000, task=CLASSIFICATION).splitlines()[0].startswith("tench")
    assert labels_for(91, task=DETECTION).splitlines()[1] == "person"
    assert labels_for(91, task=CLASSIFICATION) == "".join(f"class_{i}\n" for i in range(91))
    assert labels_for(3, ("a", "b", "c"), task=CLASSIFICATION) == "a\nb\nc\n"
