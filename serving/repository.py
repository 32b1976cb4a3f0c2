"""Writes models into a Triton model repository: `<repo>/<name>/config.pbtxt`, `labels.txt` and numbered version
folders, plus the `<name>_image` ensemble (image bytes -> preprocessing -> classifier -> top-k; for a model that
returns embeddings, image bytes -> preprocessing -> model -> the embedding, with no labels and no top-k; for a
detector, image bytes -> preprocessing (canvas, mask, original size) -> detector -> detections: boxes, scores,
labels, classes and count).

A version is staged in a hidden folder inside its model folder (same file system; Triton ignores non-numeric
folders there) and renamed into place, so a server never sees half a version; an existing version is never
replaced. config.pbtxt and labels.txt are staged with it and moved over the old ones only after that rename, and a
failure anywhere takes back what this call wrote (the ensemble's parts too), so the models stay as they were.
Reads artifacts from disk: never imports the export package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitexport.artifacts import ModelArtifact, file_record
from vitexport.errors import ServingError
from vitexport.fileio import STAGING_PREFIX, remove_dead_staging, write_atomic
from vitexport.serving import config as cfg
from vitexport.serving.backends import (
    CLASSIFIER_MODEL,
    DETECTION_POSTPROCESS_MODEL,
    POSTPROCESS_MODEL,
    PREPROCESS_MODEL,
)
from vitexport.serving.config import Batching, ServingBackend

LABELS_SOURCE = Path(__file__).parent / "labels" / "imagenet1k.txt"
# DETR's 91 COCO classes by COCO category id ("N/A" where COCO has none): transformers' id2label of
# facebook/detr-resnet-50.
COCO91_SOURCE = Path(__file__).parent / "labels" / "coco91.txt"
# Triton model names become folder names and URL path segments: keep them to a safe, non-hidden alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MODEL_FILENAMES = {"onnx": "model.onnx", "openvino": "model.xml", "tensorrt": "model.plan"}


@dataclass(frozen=True)
class AddedModel:
    name: str
    version: int
    path: Path  # the classifier's version folder
    backend: ServingBackend
    models: tuple[str, ...] = field(default=())  # every model written: classifier, then the ensemble's parts


def check_name(repo_dir: Path, name: str) -> Path:
    """The model folder for `name`, refusing names (or symlinks) that would land outside the repository."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ServingError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    root = repo_dir.resolve()
    model_dir = repo_dir / name
    if model_dir.resolve().parent != root:
        raise ServingError(f"model name {name!r} resolves outside the repository {repo_dir}")
    return model_dir


def labels_for(num_classes: int, names: tuple[str, ...] | None = None, *, task: str = "classification") -> str:
    """One label per class: the artifact's own names (an imported model's --labels), ImageNet-1k's names for
    1000-class heads, COCO's for 91-class detectors (DETR's head), the class index otherwise."""
    if names:
        return "".join(f"{n}\n" for n in names)
    if num_classes == 1000 and task == "classification":
        return LABELS_SOURCE.read_text()
    if num_classes == 91 and task == "detection":
        return COCO91_SOURCE.read_text()
    return "".join(f"class_{i}\n" for i in range(num_classes))


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def scan(repo_dir: Path) -> dict[str, cfg.pb.ModelConfig]:
    """Every model folder's parsed config, by name."""
    if not repo_dir.is_dir():
        raise ServingError(f"model repository {repo_dir} does not exist; write one with `vitexport repo`")
    return {p.name: cfg.read_config(p) for p in sorted(repo_dir.iterdir()) if (p / "config.pbtxt").is_file()}


def add_model(
    repo_dir: str | Path,
    artifact: ModelArtifact | Sequence[ModelArtifact],
    *,
    backend: ServingBackend | None = None,
    name: str | None = None,
    batching: Batching | None = None,
    instances: int = 1,
    version: int | None = None,
    ensemble: bool = True,
    top_k: int | None = None,
    threshold: float | None = None,
    tensorrt_accelerator: bool = False,
    intra_op_threads: int = 0,
    require_gate: bool = True,
) -> AddedModel:
    """Add a classifier version (and by default the `<name>_image` ensemble) to a Triton model repository. An
    artifact whose one output is `embeddings` (`--head features`) is written without labels, and its ensemble
    returns the raw embedding (`top_k` does not apply). A detector (DETR) is written with its mask input and its
    ensemble returns detections: `top_k` (default 100) and `threshold` (default 0.5) are its defaults, which
    requests may override.

    The backend defaults to the artifact's format: ONNX and OpenVINO IR to the Python backend models that serve on
    the local Triton, engines to tensorrt_plan.

    Several artifacts are accepted only for `tensorrt`: one engine per GPU compute capability, served through
    `cc_model_filenames`. `require_gate=False` is for the benchmark alone, which measures unvalidated (--quick) and
    ungated variants too and labels them so; a user's repository serves gated models only.
    """
    artifacts = [artifact] if isinstance(artifact, ModelArtifact) else list(artifact)
    if not artifacts:
        raise ServingError("no model artifact given")
    first = artifacts[0]
    detector = first.task == "detection"
    if threshold is not None and not detector:
        raise ServingError(f"a score threshold is for detectors; {first.path.name} is a {first.task} model")
    backend = backend or ServingBackend.for_format(first.format)
    repo_dir = Path(repo_dir)
    name = first.model if name is None else name
    model_dir = check_name(repo_dir, name)
    try:
        repo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServingError(f"cannot create the model repository {repo_dir}: {e.strerror or e}") from None

    for a in artifacts:
        if a.format not in backend.formats:
            raise ServingError(
                f"backend {backend.value} serves {' or '.join(backend.formats)} models; {a.path} is {a.format}"
            )
        if require_gate and not a.passed_gate:
            raise ServingError(
                f"{a.path.name} has not passed its accuracy gate (its sidecar records no passed validation); "
                "export, optimize or build it again with vitexport"
            )
    files: dict[str, Path] = {}  # file name in the version folder -> source
    cc_files: dict[str, str] | None = None
    if backend is ServingBackend.tensorrt:
        if first.batch_size is None:  # a fixed-batch engine is served unbatched, with the batch in its dims
            batching = cfg.tensorrt_batching(_engine_profile(first), batching)
        if len(artifacts) > 1:
            cc_files = {}
            for engine in artifacts:
                _same_model(first, engine)
                cc = engine.compute_capability or ""
                if not cc or cc in cc_files:
                    raise ServingError(f"engines need distinct compute capabilities; {engine.path} has {cc or 'none'}")
                cc_files[cc] = f"model.{cc}.plan"
                files[cc_files[cc]] = engine.path
    elif len(artifacts) > 1:
        raise ServingError("several artifacts are only accepted for --backend tensorrt (one engine per GPU)")
    batching = batching or Batching()
    model_filename = MODEL_FILENAMES.get(first.format, first.path.name)
    if first.format == "onnx" and backend is ServingBackend.openvino:
        model_filename = "model.onnx"
    if not cc_files:
        files[model_filename] = first.path
        files.update(_companion_files(first, model_filename))
    # Several engines: the sidecar is the first one's (the others differ only in the GPU they were built for).
    sidecar = _version_sidecar(first, dict(list(files.items())[:1]) if cc_files else dict(files))

    classifier = cfg.classifier_config(
        name,
        first,
        backend=backend,
        batching=batching,
        instances=instances,
        model_filename=model_filename,
        cc_model_filenames=cc_files,
        tensorrt_accelerator=tensorrt_accelerator,
        intra_op_threads=intra_op_threads,
    )
    _check_compatible(model_dir, classifier)
    version = _next_version(model_dir, version)

    parts: list[tuple[Path, cfg.pb.ModelConfig, dict[str, Path], str | None]] = []
    # A model returning embeddings has no classes: no labels.txt, no top-k step; its ensemble returns the embedding.
    embeddings = not detector and (first.head == "features" or cfg.returns_embeddings(first.output_names))
    labels = None if embeddings else labels_for(first.num_classes, first.labels, task=first.task)
    if backend.runtime:
        files["model.py"] = CLASSIFIER_MODEL
    # A detector's labels go with its post-processing only: nothing reads them beside the model (no classification).
    parts.append((model_dir, classifier, files, None if detector else labels))
    if ensemble:
        if classifier.max_batch_size == 0:
            raise ServingError("the image ensemble needs a dynamic-batch model; export without a fixed batch size")
        pre = cfg.preprocess_config(f"{name}_preprocess", first.preprocess, max_batch_size=classifier.max_batch_size)
        post = None
        if detector:
            post = cfg.detection_postprocess_config(
                f"{name}_postprocess",
                num_classes=first.num_classes,
                max_batch_size=classifier.max_batch_size,
                threshold=cfg.DEFAULT_THRESHOLD if threshold is None else threshold,
                top_k=cfg.DEFAULT_DETECTIONS if top_k is None else top_k,
                logits=first.output_names[0],
                boxes=first.output_names[1],
            )
            image = cfg.detection_ensemble_config(
                f"{name}_image", detector=classifier, preprocess=pre, postprocess=post
            )
        elif not embeddings:
            post = cfg.postprocess_config(
                f"{name}_postprocess",
                num_classes=first.num_classes,
                top_k=cfg.DEFAULT_TOP_K if top_k is None else top_k,
                max_batch_size=classifier.max_batch_size,
                logits=first.output_names[0],
            )
        if not detector:
            image = cfg.ensemble_config(f"{name}_image", classifier=classifier, preprocess=pre, postprocess=post)
        parts.append((check_name(repo_dir, pre.name), pre, {"model.py": PREPROCESS_MODEL}, None))
        if post is not None:
            backend_file = DETECTION_POSTPROCESS_MODEL if detector else POSTPROCESS_MODEL
            parts.append((check_name(repo_dir, post.name), post, {"model.py": backend_file}, labels))
        parts.append((check_name(repo_dir, image.name), image, {}, None))  # an ensemble still needs its version folder
        for part_dir, part, *_ in parts[1:]:
            _check_compatible(part_dir, part)
            if version in versions(part_dir):
                raise ServingError(f"{part_dir}/{version} already exists; choose another --version")
    _check_ensembles(repo_dir, classifier, rewritten={part.name for _, part, *_ in parts})

    undo: list[_Undo] = []
    try:
        for part_dir, part, part_files, part_labels in parts:
            undo.append(
                _write_model(part_dir, part, version, part_files, part_labels, sidecar if part is classifier else None)
            )
    except BaseException:
        # All or nothing: an ensemble whose parts disagree (a new classifier, an old preprocessing) would not load.
        for step in reversed(undo):
            step.revert()
        raise
    return AddedModel(name, version, model_dir / str(version), backend, tuple(p[1].name for p in parts))


def _engine_profile(engine: ModelArtifact) -> dict[str, int]:
    if engine.batch_profile is None:
        raise ServingError(f"{engine.sidecar} has no optimization profile (batch_profile: min, opt and max)")
    return dict(zip(("min", "opt", "max"), engine.batch_profile, strict=True))


def _same_model(a: ModelArtifact, b: ModelArtifact) -> None:
    if b.format != "tensorrt":
        raise ServingError(f"{b.path} is a {b.format} artifact, not a TensorRT engine")
    keys = ("model", "preprocess", "num_classes", "input_name", "output_names")
    if any(getattr(a, k) != getattr(b, k) for k in keys) or _engine_profile(a) != _engine_profile(b):
        raise ServingError(f"engines {a.path} and {b.path} are not builds of the same model and profile")


def _companion_files(artifact: ModelArtifact, model_filename: str) -> dict[str, Path]:
    """Files that must travel with the model file: ONNX external weights, OpenVINO IR weights. The sidecar lists
    them (plain names beside it, checked by load_artifact); an older sidecar's by the names vitexport gives them."""
    src = artifact.path
    if artifact.files is not None and artifact.format == "onnx":
        # The graph refers to its external data by these names, so they are kept.
        return {n: src.with_name(n) for n in artifact.files if n != src.name}
    if artifact.format == "onnx":
        data = src.with_name(src.name + ".data")
        # The graph refers to its external data by the original file name, so that name is kept.
        return {data.name: data} if data.exists() else {}
    if artifact.format == "openvino":
        weights = src.with_suffix(".bin")
        if not weights.exists():
            raise ServingError(f"OpenVINO IR {src} has no weights file {weights}")
        if artifact.files is not None and weights.name not in artifact.files:  # weights nothing vouches for
            raise ServingError(f"{artifact.sidecar.name} does not record {weights.name}; optimize it again")
        return {Path(model_filename).with_suffix(".bin").name: weights}
    return {}


def _version_sidecar(artifact: ModelArtifact, files: dict[str, Path]) -> dict:
    """The copied model file's sidecar (the version folder is itself a loadable artifact): the artifact's, under the
    names the files get there, with their records as the artifact's sidecar has them (else as read now)."""
    recorded = artifact.files or {}
    records = {name: recorded.get(source.name) or file_record(source) for name, source in files.items()}
    return artifact.to_dict() | {"path": next(iter(files)), "files": records}


def _check_compatible(model_dir: Path, new: cfg.pb.ModelConfig) -> None:
    """A new version may change batching, not what the model is: a mismatch would break the older versions."""
    if not (model_dir / "config.pbtxt").is_file():
        return
    old = cfg.read_config(model_dir)
    for key in ("platform", "backend", "input", "output"):
        if getattr(old, key) != getattr(new, key):
            raise ServingError(f"{model_dir.name} in the repository has a different {key}; choose another --name")


def _check_ensembles(repo_dir: Path, classifier: cfg.pb.ModelConfig, *, rewritten: set[str]) -> None:
    """Triton refuses an ensemble that batches more than one of its steps: a smaller max batch size for the
    classifier would stop the ensembles already built on it (and not written again now) from loading."""
    for model_dir in sorted(repo_dir.iterdir()):
        if model_dir.name in rewritten or not (model_dir / "config.pbtxt").is_file():
            continue
        try:
            config = cfg.read_config(model_dir)
        except ServingError:  # another model's broken config is for the server to report, not a reason to stop here
            continue
        steps = {step.model_name for step in config.ensemble_scheduling.step}
        if classifier.name in steps and config.max_batch_size > classifier.max_batch_size:
            raise ServingError(
                f"the ensemble {model_dir.name} in the repository batches up to {config.max_batch_size}: give "
                f"{classifier.name} --max-batch-size {config.max_batch_size} or more, or write the ensemble again"
            )


MAX_VERSION = 2**31 - 1  # Triton reads version folders with stoll and keeps them in int64: far above, it dies


def _next_version(model_dir: Path, version: int | None) -> int:
    existing = versions(model_dir)
    if version is None:
        return (existing[-1] + 1) if existing else 1
    if not 1 <= version <= MAX_VERSION:
        raise ServingError(f"version must be 1..{MAX_VERSION}, got {version}")
    if version in existing:
        raise ServingError(f"{model_dir}/{version} already exists; versions are never overwritten")
    return version


@dataclass(frozen=True)
class _Undo:
    """How to take back one written model: its new version folder, and the files beside it as they were."""

    version_dir: Path
    previous: dict[Path, str | None]  # config.pbtxt / labels.txt -> former text (None: there was none)

    def revert(self) -> None:
        shutil.rmtree(self.version_dir, ignore_errors=True)
        for path, text in self.previous.items():
            with contextlib.suppress(OSError):
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    write_atomic(path, text)
        with contextlib.suppress(OSError):  # a model folder the call created, empty again (rmdir refuses otherwise)
            self.version_dir.parent.rmdir()


def _write_model(
    model_dir: Path,
    config: cfg.pb.ModelConfig,
    version: int,
    files: dict[str, Path],
    labels: str | None,
    sidecar: dict | None,
) -> _Undo:
    """Stage the version folder, config.pbtxt and labels.txt in one hidden folder, rename the version into place,
    then move the config and labels over the old ones: until the version exists, the model is untouched."""
    text = cfg.render(config)
    cfg.parse(text, f"{config.name}/config.pbtxt")  # what we write must read back
    created = not model_dir.exists()
    try:  # a read-only repository (or a file where the model folder goes) fails here: one line, as below
        model_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(model_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir))
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from None
    target = model_dir / str(version)
    # Config last: it is what makes a polling server (re)load the model with the new settings.
    beside = ({model_dir / cfg.LABELS_FILE: labels} if labels is not None else {}) | {model_dir / "config.pbtxt": text}
    undo = _Undo(target, {path: _read_text(path) for path in beside})
    renamed = False
    try:
        staged = staging / "version"
        staged.mkdir()
        staged.chmod(0o755)  # explicit: a server running as another user must be able to read the version
        for name, source in files.items():
            shutil.copyfile(source, staged / name)
        if sidecar is not None:
            write_atomic(staged / f"{sidecar['path']}.json", json.dumps(sidecar, indent=2) + "\n")
        for path, content in beside.items():
            write_atomic(staging / path.name, content)
        if target.exists():  # a concurrent writer got there first
            raise ServingError(f"{target} already exists; versions are never overwritten")
        # rename(2) refuses a non-empty target, so even a racing writer cannot replace a finished version.
        staged.rename(target)
        renamed = True
        for path in beside:
            os.replace(staging / path.name, path)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if renamed:
            undo.revert()
        elif created:  # nothing of the model was visible yet: leave no empty folder behind either
            with contextlib.suppress(OSError):
                model_dir.rmdir()
        if isinstance(e, OSError):
            raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return undo


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ServingError(f"cannot read {path}: {e.strerror or e}") from None
