"""Writes models into a Triton model repository: `<repo>/<name>/config.pbtxt`, `labels.txt` and numbered version
folders, plus the `<name>_image` ensemble: image bytes -> preprocessing -> the model -> its task's post-processing
(`vitexport.tasks`: a classifier's labelled probabilities; a detector's boxes, scores, labels, classes and count;
none for an embedding model, whose ensemble answers the embedding, with no labels).

Versions are written all or nothing (serving/versions.py): a server never sees half a version, an existing one is
never replaced, and a failure takes back every part this call wrote.
Reads artifacts from disk: never imports the export package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitexport.artifacts import ModelArtifact, file_record
from vitexport.errors import ServingError, VitExportError
from vitexport.preprocess import ServedPreprocessing
from vitexport.serving import config as cfg
from vitexport.serving import samples
from vitexport.serving.backends import MODEL_RUNNER, PREPROCESS_MODEL, postprocess_model
from vitexport.serving.config import Batching, ServingBackend
from vitexport.serving.versions import ModelPart, next_version, versions, write_parts
from vitexport.tasks import Task, task_of

# The tasks' usual classes (Task.default_labels): ImageNet-1k; DETR's 91 COCO classes by COCO category id ("N/A"
# where COCO has none), transformers' id2label of facebook/detr-resnet-50.
LABELS_DIR = Path(__file__).parent / "labels"
# Triton model names become folder names and URL path segments: keep them to a safe, non-hidden alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# The image ensemble's preprocessing instances by default: one per CORES_PER_PREPROCESS_INSTANCE cores, at least one
# and at most MAX_PREPROCESS_INSTANCES. On 2 cores a second instance measured no gain with the model sharing the cores
# (12 MP JPEGs at concurrency 8: -11% to +11% over two runs, within this shared machine's noise; docs/benchmarks.md,
# "The image path: what was tried"); larger machines are not measured yet.
CORES_PER_PREPROCESS_INSTANCE = 4
MAX_PREPROCESS_INSTANCES = 4
MODEL_FILENAMES = {"onnx": "model.onnx", "openvino": "model.xml", "tensorrt": "model.plan"}


@dataclass(frozen=True)
class AddedModel:
    name: str
    version: int
    path: Path  # the model's version folder
    backend: ServingBackend
    models: tuple[str, ...] = field(default=())  # every model written: the model, then the ensemble's parts


def check_name(repo_dir: Path, name: str) -> Path:
    """The model folder for `name`, refusing names (or symlinks) that would land outside the repository."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ServingError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    root = repo_dir.resolve()
    model_dir = repo_dir / name
    if model_dir.resolve().parent != root:
        raise ServingError(f"model name {name!r} resolves outside the repository {repo_dir}")
    return model_dir


def labels_for(num_classes: int, names: tuple[str, ...] | None = None, *, task: Task) -> str:
    """One label per class: the artifact's own names (an imported model's --labels), else the task's usual classes
    where the head has their number (ImageNet-1k's 1000, COCO's 91), else the class index."""
    if names:
        return "".join(f"{n}\n" for n in names)
    default = task.default_labels(num_classes)
    if default is not None:
        return (LABELS_DIR / default).read_text()
    return "".join(f"class_{i}\n" for i in range(num_classes))


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
    preprocessing: ServedPreprocessing | None = None,
    preprocess_instances: int | None = None,
) -> AddedModel:
    """Add a model version (and by default the `<name>_image` ensemble) to a Triton model repository. The model's
    task (`vitexport.tasks`) says what is written: a classifier with its labels, its ensemble answering every class's
    probability (labelled: Triton's classification extension ranks them), `top_k` (default 5) the k clients ask by
    default; an embedding model without labels, its ensemble answering the raw embedding; a detector
    with its mask input, its ensemble answering detections, `top_k` (default 100) and `threshold` (default 0.5)
    the defaults that requests may override.

    The backend defaults to the artifact's format: ONNX and OpenVINO IR to the Python backend models that serve on
    the local Triton, engines to tensorrt_plan.

    Several artifacts are accepted only for `tensorrt`: one engine per GPU compute capability, served through
    `cc_model_filenames`. `require_gate=False` is for the benchmark alone, which measures unvalidated (--quick) and
    ungated variants too and labels them so; a user's repository serves gated models only.
    `preprocessing`: the ensemble's (`pipeline.choose_preprocessing`; default exact), `preprocess_instances` its count.
    """
    artifacts = [artifact] if isinstance(artifact, ModelArtifact) else list(artifact)
    if not artifacts:
        raise ServingError("no model artifact given")
    first = artifacts[0]
    task = task_of(first)
    settings = _settings(first, task, top_k=top_k, threshold=threshold)
    backend = backend or ServingBackend.for_format(first.format)
    repo_dir = Path(repo_dir)
    name = first.model if name is None else name
    model_dir = check_name(repo_dir, name)
    try:
        repo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServingError(f"cannot create the model repository {repo_dir}: {e.strerror or e}") from None
    _check_artifacts(artifacts, backend, require_gate=require_gate)
    labels = labels_for(first.num_classes, first.labels, task=task) if task.has_labels else None
    served = dict(instances=instances, tensorrt_accelerator=tensorrt_accelerator, intra_op_threads=intra_op_threads)
    model = _model_part(model_dir, artifacts, backend, batching, labels, **served)
    _check_compatible(model_dir, model.config)
    version = next_version(model_dir, version)
    parts = [model]
    if ensemble:
        pre = _Preprocessing(preprocessing or ServedPreprocessing(), preprocess_instances)
        parts += _ensemble_parts(repo_dir, name, first, task, model.config, settings, labels, version, pre)
    _check_ensembles(repo_dir, model.config, rewritten={part.config.name for part in parts})
    write_parts(parts, version)
    return AddedModel(name, version, model_dir / str(version), backend, tuple(part.config.name for part in parts))


def _settings(artifact: ModelArtifact, task: Task, *, top_k: int | None, threshold: float | None) -> dict[str, Any]:
    """The post-processing's settings as given (None: the task's default), checked by the task now, whether or not
    an ensemble is written: a score threshold only for a task whose post-processing takes one."""
    if threshold is not None and "threshold" not in cfg.settings_of(task):
        raise ServingError(f"a score threshold is for detectors; {artifact.path.name} is a {task.name} model")
    settings = {"top_k": top_k, "threshold": threshold}
    try:
        task.check_settings(settings, artifact.num_classes)
    except VitExportError as e:
        raise ServingError(str(e)) from None
    return settings


def _model_part(
    model_dir: Path,
    artifacts: list[ModelArtifact],
    backend: ServingBackend,
    batching: Batching | None,
    labels: str | None,
    **served: Any,
) -> ModelPart:
    """The model itself: its config, the files of its version (the model file and its companions; several engines'
    one per GPU; our runner for the Python backend), and labels.txt where its config labels outputs."""
    first = artifacts[0]
    if backend is ServingBackend.tensorrt and first.batch_size is None:
        # A fixed-batch engine is served unbatched, with the batch in its dims; others batch as their profile says.
        batching = cfg.tensorrt_batching(_engine_profile(first), batching)
    model_filename, files, cc_files = _model_files(artifacts, backend)
    # Several engines: the sidecar is the first one's (the others differ only in the GPU they were built for).
    sidecar = _version_sidecar(first, dict(list(files.items())[:1]) if cc_files else dict(files))
    config = cfg.model_config(
        model_dir.name,
        first,
        backend=backend,
        batching=batching or Batching(),
        model_filename=model_filename,
        cc_model_filenames=cc_files,
        **served,
    )
    if backend.runtime:
        files["model.py"] = MODEL_RUNNER
    # labels.txt goes beside the model only for the outputs Triton's classification extension labels (a
    # detector's labels are its post-processing's alone).
    labelled = any(output.label_filename for output in config.output)
    tensors = samples.photo_tensors(first.preprocess)
    beside: dict[str, str | bytes] = {samples.PERF_INPUT: samples.perf_input(config, tensors)}
    beside.update(samples.add_warmup(config, tensors))
    return ModelPart(model_dir, config, files, labels if labelled else None, sidecar, beside)


def _check_artifacts(artifacts: list[ModelArtifact], backend: ServingBackend, *, require_gate: bool) -> None:
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
    if len(artifacts) > 1 and backend is not ServingBackend.tensorrt:
        raise ServingError("several artifacts are only accepted for --backend tensorrt (one engine per GPU)")


def _model_files(
    artifacts: list[ModelArtifact], backend: ServingBackend
) -> tuple[str, dict[str, Path], dict[str, str] | None]:
    """The model file's name in the version folder, the files to copy there (name -> source), and several engines'
    file per GPU compute capability (None: one model file)."""
    first = artifacts[0]
    files: dict[str, Path] = {}
    model_filename = MODEL_FILENAMES.get(first.format, first.path.name)
    if first.format == "onnx" and backend is ServingBackend.openvino:
        model_filename = "model.onnx"
    if len(artifacts) == 1:
        files[model_filename] = first.path
        files.update(_companion_files(first, model_filename))
        return model_filename, files, None
    cc_files: dict[str, str] = {}
    for engine in artifacts:
        _same_model(first, engine)
        cc = engine.compute_capability or ""
        if not cc or cc in cc_files:
            raise ServingError(f"engines need distinct compute capabilities; {engine.path} has {cc or 'none'}")
        cc_files[cc] = f"model.{cc}.plan"
        files[cc_files[cc]] = engine.path
    return model_filename, files, cc_files


def _ensemble_parts(
    repo_dir: Path,
    name: str,
    artifact: ModelArtifact,
    task: Task,
    model: cfg.pb.ModelConfig,
    settings: dict[str, Any],
    labels: str | None,
    version: int,
    preprocessing: _Preprocessing,
) -> list[ModelPart]:
    """The image ensemble's preprocessing, its post-processing (where the task has one) and the ensemble itself."""
    if model.max_batch_size == 0:
        raise ServingError("the image ensemble needs a dynamic-batch model; export without a fixed batch size")
    batch = model.max_batch_size
    instances = preprocessing.instances or preprocess_instances_for_machine()
    pre = cfg.preprocess_config(
        f"{name}_preprocess",
        artifact.preprocess,
        task,
        max_batch_size=batch,
        instances=instances,
        served=preprocessing.served,
    )
    warm = samples.add_warmup(pre, None)  # on the photograph: decoding and resizing warm up too
    parts = [ModelPart(check_name(repo_dir, pre.name), pre, {"model.py": PREPROCESS_MODEL}, beside=warm)]
    post, backend_file = None, postprocess_model(task)
    if backend_file is not None:
        outputs = cfg.tensor_specs(model.output)
        num_classes = artifact.num_classes
        post = cfg.postprocess_config(
            f"{name}_postprocess", task, outputs, settings, num_classes=num_classes, max_batch_size=batch
        )
        warm = samples.add_warmup(post, None)
        parts.append(ModelPart(check_name(repo_dir, post.name), post, {"model.py": backend_file}, labels, beside=warm))
    image = cfg.ensemble_config(f"{name}_image", task, model, pre, post)
    # An ensemble still needs its version folder; labels.txt where it answers labelled outputs (a classifier's
    # probabilities), and perf_analyzer's input data (the encoded photograph).
    ensemble_labels = labels if any(output.label_filename for output in image.output) else None
    perf = {samples.PERF_INPUT: samples.perf_input(image, None)}
    parts.append(ModelPart(check_name(repo_dir, image.name), image, {}, ensemble_labels, beside=perf))
    for part in parts:
        # The ensemble's steps are vitexport's own code, written whole with each version: their outputs are this
        # vitexport's contract (0.1's classifier ensemble answered labels, scores and indices; 0.2 its probabilities).
        _check_compatible(part.model_dir, part.config, outputs_may_change=True)
        if version in versions(part.model_dir):
            raise ServingError(f"{part.model_dir}/{version} already exists; choose another --version")
    return parts


@dataclass(frozen=True)
class _Preprocessing:
    served: ServedPreprocessing
    instances: int | None


def preprocess_instances_for_machine() -> int:
    """The image ensemble's preprocessing instances for the CPU cores this process may use. Each is a process that
    decodes one request at a time (Pillow's decode and resize are one core's work), so more instances decode more
    photos at once, but the model needs the same cores: see CORES_PER_PREPROCESS_INSTANCE."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores // CORES_PER_PREPROCESS_INSTANCE, MAX_PREPROCESS_INSTANCES))


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


def _check_compatible(model_dir: Path, new: cfg.pb.ModelConfig, *, outputs_may_change: bool = False) -> None:
    """A new version may change batching, not what the model is: a mismatch would break the older versions. An image
    ensemble's part may change its outputs (`outputs_may_change`): Triton loads the latest version of each, which
    the config written now describes."""
    if not (model_dir / "config.pbtxt").is_file():
        return
    old, new = _without_formats(cfg.read_config(model_dir)), _without_formats(new)
    for key in ("platform", "backend", "input", *(() if outputs_may_change else ("output",))):
        # Outputs may be added after the old ones: a client of the old ones still gets them, and Triton loads the
        # latest version only, which answers them all.
        had, has = getattr(old, key), getattr(new, key)
        if (list(had) != list(has)[: len(had)]) if key == "output" else had != has:
            raise ServingError(f"{model_dir.name} in the repository has a different {key}; choose another --name")


def _without_formats(config: cfg.pb.ModelConfig) -> cfg.pb.ModelConfig:
    """The config less its inputs' image formats: repositories written before models declared them stay compatible
    (the config, rewritten with each version, declares it for the older versions too)."""
    copy = cfg.pb.ModelConfig()
    copy.CopyFrom(config)
    for tensor in copy.input:
        tensor.ClearField("format")
    return copy


def _check_ensembles(repo_dir: Path, model: cfg.pb.ModelConfig, *, rewritten: set[str]) -> None:
    """Triton refuses an ensemble that batches more than one of its steps: a smaller max batch size for the
    model would stop the ensembles already built on it (and not written again now) from loading."""
    for model_dir in sorted(repo_dir.iterdir()):
        if model_dir.name in rewritten or not (model_dir / "config.pbtxt").is_file():
            continue
        try:
            config = cfg.read_config(model_dir)
        except ServingError:  # another model's broken config is for the server to report, not a reason to stop here
            continue
        steps = {step.model_name for step in config.ensemble_scheduling.step}
        if model.name in steps and config.max_batch_size > model.max_batch_size:
            raise ServingError(
                f"the ensemble {model_dir.name} in the repository batches up to {config.max_batch_size}: give "
                f"{model.name} --max-batch-size {config.max_batch_size} or more, or write the ensemble again"
            )
