"""The front door's workflows: what takes more than one stage, and the stage functions as a Python user calls them
(paths as strings, choices as strings such as "onnxruntime" or "int8").

A layer of its own, between the CLI and benchmarks above and the stages below: it may import `export` and
`serving` (which never import each other), and the CLI's commands call it instead of wiring the stages themselves.
Like the stages, it never prints or exits: what the CLI would say (the note that calibration falls back to
photographs) is returned, and errors are `VitExportError`s. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitexport.artifacts import ModelArtifact, Precision, load_artifact
from vitexport.errors import VitExportError
from vitexport.variants import DEPLOYABLE, Runtime, ServingBackend, Variant, get_variant, parse_variants

if TYPE_CHECKING:
    from vitexport.export.deploy import Candidate
    from vitexport.export.fp16 import IOType
    from vitexport.export.fusion import Fusion
    from vitexport.export.options import Heads
    from vitexport.export.quantize import QuantMethod
    from vitexport.export.select import Timed
    from vitexport.preprocess import ServedPreprocessing
    from vitexport.serving.repository import AddedModel
    from vitexport.serving.server import TritonServer

Progress = Callable[[str], None]
ArtifactLike = ModelArtifact | str | Path  # an artifact, or its model file or sidecar on disk


def _quiet(_: str) -> None:
    pass


def artifact_of(artifact: ArtifactLike) -> ModelArtifact:
    """An artifact as given, or loaded (and its files checked) from its model file or sidecar."""
    return artifact if isinstance(artifact, ModelArtifact) else load_artifact(artifact)


# --- the stages, as a Python user calls them ---------------------------------------------------------------------


def export_onnx(
    name: str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    batch_size: int | None = None,
    heads: Heads | str = "avg",
    opset: int | None = None,
    attention: str = "sdpa",
    validate: bool = True,
    progress: Progress = _quiet,
) -> ModelArtifact:
    """Export a registered model to `output` (ONNX), check it with onnx.checker and validate it on ONNX Runtime
    against PyTorch; the artifact, its sidecar beside it. `heads`: "avg" (the logits; DeiT distilled: the mean of its
    two heads), "all" (a distilled model's three outputs) or "features" (the pooled embedding). `opset`: 18 by
    default, 18-23; `batch_size` fixes the batch axis (default: dynamic). The stage is
    `vitexport.export.onnx.export_onnx`."""
    from vitexport.export import onnx
    from vitexport.export.options import Heads

    return onnx.export_onnx(
        name,
        output,
        checkpoint=checkpoint,
        pretrained=pretrained,
        opset=onnx.DEFAULT_OPSET if opset is None else opset,
        img_size=img_size,
        batch_size=batch_size,
        heads=_choice(Heads, heads, "heads"),
        attention=attention,
        validate=validate,
        progress=progress,
    )


def optimize(
    artifact: ArtifactLike,
    *,
    runtime: Runtime | str = "onnxruntime",
    precision: Precision | str = "fp32",
    calibration: str | Path | None = None,
    images: str | Path | None = None,
    output: str | Path | None = None,
    fuse_attention: Fusion | str | None = None,
    io_type: IOType | str = "fp32",
    quant_method: QuantMethod | str | None = None,
    calibration_limit: int | None = None,
    validate: bool = True,
    progress: Progress = _quiet,
) -> ModelArtifact:
    """An optimized variant of an fp32 ONNX artifact (or its path) for `runtime` ("onnxruntime", "openvino") at
    `precision` ("fp32", "fp16", "bf16", "int8"), written only if it passed its accuracy gate against the source
    (else `ValidationError`, and nothing is written). INT8 calibrates on the image folder `calibration`; the gate
    grades on `images` (default: images held out of the calibration folder). `output` defaults to a name beside the
    source. `fuse_attention` ("ort", "onnx", "none"), `io_type` ("fp32", "fp16": FP16 graphs' inputs and outputs)
    and `quant_method` ("dynamic", "static": ONNX Runtime INT8) default to the runtime's choice. The stage is
    `vitexport.export.optimize.optimize`."""
    from vitexport.export import optimize as stage
    from vitexport.export.fp16 import IOType
    from vitexport.export.fusion import Fusion
    from vitexport.export.quantize import QuantMethod

    return stage.optimize(
        artifact_of(artifact),
        runtime=_choice(Runtime, runtime, "runtime"),
        precision=_choice(Precision, precision, "precision"),
        fuse_attention=None if fuse_attention is None else _choice(Fusion, fuse_attention, "fuse_attention"),
        calibration=calibration,
        images=images,
        output=output,
        io_type=_choice(IOType, io_type, "io_type"),
        quant_method=None if quant_method is None else _choice(QuantMethod, quant_method, "quant_method"),
        calibration_limit=stage.CALIBRATION_LIMIT if calibration_limit is None else calibration_limit,
        validate=validate,
        progress=progress,
    )


def add_to_repository(
    repo_dir: str | Path,
    artifact: ArtifactLike | Sequence[ArtifactLike],
    *,
    name: str | None = None,
    backend: ServingBackend | str | None = None,
    **options: Any,
) -> AddedModel:
    """Write a model into a Triton model repository (a new version, its config and labels) and its `<name>_image`
    ensemble: the serving stage's `add_model` (`vitexport.serving.repository`), taking paths and a backend's name
    ("python-onnxruntime", "python-openvino", "onnxruntime", "openvino", "tensorrt") too. Every other option is
    add_model's (batching=, instances=, version=, ensemble=, top_k=, threshold=, ...)."""
    from vitexport.serving.repository import add_model

    given = [artifact] if isinstance(artifact, ModelArtifact | str | Path) else list(artifact)
    chosen = None if backend is None else _choice(ServingBackend, backend, "backend")
    return add_model(repo_dir, [artifact_of(a) for a in given], name=name, backend=chosen, **options)


@contextlib.contextmanager
def serve(repo_dir: str | Path, **options: Any) -> Iterator[TritonServer]:
    """A real Triton server on a model repository: started, ready (every model it can run here loaded), yielded,
    and stopped on exit, its backend processes and shared memory with it. `server.endpoints.http` and `.grpc` are
    the addresses to give `vitexport.Client`; `server.skipped` names the models this machine cannot run and why.
    Options are `vitexport.serving.server.TritonServer`'s (host=, http_port=, grpc_port=, metrics_port=, models=,
    startup_timeout=, model_control=); ports default to free ones."""
    from vitexport.serving.server import TritonServer

    with TritonServer(repo_dir, **options) as server:
        yield server


# --- what `vitexport repo` serves --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What goes into the repository of the artifacts given: all of them (one, or TensorRT engines: one per GPU
    compute capability), or of several CPU variants of one model the fastest that passed its gate (`timings`: each
    variant's speed here, fastest first)."""

    artifacts: tuple[ModelArtifact, ...]
    timings: tuple[Timed, ...] = ()


def select_for_serving(artifacts: Sequence[ModelArtifact], *, batch: int, progress: Progress = _quiet) -> Selection:
    """Several CPU variants of one model: the fastest that passed its accuracy gate, timed here at `batch` (the
    fastest variant depends on this CPU's instructions, so it is measured, not assumed from the precision). Engines,
    or a single artifact: served as given."""
    if len(artifacts) < 2 or any(a.format == "tensorrt" for a in artifacts):
        return Selection(tuple(artifacts))
    from vitexport.export.select import rank_by_speed

    timings = rank_by_speed(artifacts, batch=batch, progress=progress)
    return Selection((timings[0].artifact,), tuple(timings))


# --- the served preprocessing: fast where its gate passes -----------------------------------------------------------


class PreprocessPath(str, Enum):
    """`--preprocess`: fast (the reduced decode, where its gate passes for the model; else exact, said in one line)
    or exact (the reference, always)."""

    fast = "fast"
    exact = "exact"


def choose_preprocessing(
    artifact: ModelArtifact, asked: PreprocessPath | str = PreprocessPath.fast, *, progress: Progress = _quiet
) -> tuple[ServedPreprocessing, str | None]:
    """(how the image ensemble of `artifact` preprocesses, a note for the user): the fast path where it passes its
    gate against the exact one on this very model (`export.gate.preprocess_gate`, photographs of 0.3 to 12 MP), and
    clients sending large photos resized where that passes the same gate too; the gate's figures recorded with it.
    The exact reference when asked, and where the gate fails or cannot run here (a TensorRT engine on a machine
    without its GPU): then the note says why."""
    from vitexport.export.gate import preprocess_figures, preprocess_gates
    from vitexport.export.runners import load_runner
    from vitexport.preprocess import ServedPreprocessing
    from vitexport.tasks import task_of

    if _choice(PreprocessPath, asked, "preprocess") is PreprocessPath.exact:
        return ServedPreprocessing(fast=False), None
    progress("gating the fast preprocessing against the exact one (photographs of 0.3, 2 and 12 MP)")
    task = task_of(artifact)
    try:
        run = load_runner(artifact, spinning=False)
    except VitExportError as e:
        return ServedPreprocessing(fast=False), f"preprocessing: exact (the fast path's gate cannot run here: {e})"
    precision = artifact.precision.value
    fast, sent = preprocess_gates(
        run, artifact.preprocess, task, output_names=artifact.output_names, precision=precision
    )
    gate = {"fast": preprocess_figures(fast), "sent resized": preprocess_figures(sent)}
    if not fast.passed:
        why = f"preprocessing: exact (the fast path failed its gate: {'; '.join(fast.failures)})"
        return ServedPreprocessing(fast=False, gate=gate), why
    # Photos sent resized that fail their own gate are sent as they are: the figures say why, no note needed.
    return ServedPreprocessing(fast=True, send_resized=sent.passed, gate=gate), None


# --- deploy: a model to its fastest gated variant, served ---------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What `deploy` did: every candidate (fastest gated first, then those that failed, each with its verdict), the
    chosen variant, the repository entry written, and notes for the user (the calibration images it chose)."""

    source: ModelArtifact  # the fp32 ONNX the candidates came from
    candidates: tuple[Candidate, ...]
    chosen: ModelArtifact
    added: AddedModel
    notes: tuple[str, ...] = ()
    preprocessing: ServedPreprocessing | None = None  # the image ensemble's, and its gate's figures

    def to_dict(self) -> dict[str, Any]:
        chosen = self.preprocessing
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "path": str(self.added.path),
            "models": list(self.added.models),
            "preprocess": None if chosen is None else chosen.to_parameters() | {"preprocess_gate": chosen.gate},
        }


def default_calibration(
    calibration: str | Path | None, images: str | Path | None
) -> tuple[Path, Path | None, str | None]:
    """(calibration, images, note): the folders as given, or, without calibration images, real photographs
    (scikit-image's, written once into the cache): calibration crops of some, gate crops of others, and the note
    that says so (the user's own images are better for their model)."""
    if calibration is not None:
        return Path(calibration), None if images is None else Path(images), None
    from vitexport.export.photos import deploy_photos

    calibration, gate = deploy_photos()
    chosen = gate if images is None else Path(images)
    note = (
        f"no calibration images given: calibrating on real photographs (scikit-image's {calibration.name}) and "
        f"gating on others ({chosen.name}); give your own images for your model"
    )
    return calibration, chosen, note


def deploy(
    model_or_onnx: str | Path,
    *,
    repo: str | Path = "model_repository",
    name: str | None = None,
    calibration: str | Path | None = None,
    images: str | Path | None = None,
    checkpoint: str | Path | None = None,
    runtimes: str | Sequence[str | Variant | tuple[Runtime | str, Precision | str]] | None = None,
    labels: str | Path | None = None,
    workdir: str | Path | None = None,
    preprocess: PreprocessPath | str = PreprocessPath.fast,
    progress: Progress = _quiet,
) -> Deployment:
    """A registered model (exported first) or an fp32 ONNX artifact, to its fastest variant that passed its gate,
    written into the Triton repository `repo` with its image ensemble.

    Every candidate (`runtimes`: "openvino-int8,onnxruntime-fp32" or such items; default OpenVINO INT8 and BF16,
    ONNX Runtime INT8 and fp32) is built and gated in `workdir` (default `deploy/<name>`), those that passed are
    timed side by side here, and the fastest is written. INT8 calibrates on the image folder `calibration` (default:
    real photographs, said in `notes`); the gates grade on `images`. `labels`: class names, one per line, served
    with the model. `preprocess`: "fast" (where its gate passes for the chosen variant) or "exact"
    (`choose_preprocessing`). Bad input is refused before minutes of building."""
    from vitexport.export.deploy import deploy_candidates
    from vitexport.export.onnx import export_or_load
    from vitexport.export.onnx_import import read_labels
    from vitexport.serving.repository import add_model

    chosen_names = check_deploy(model_or_onnx, calibration=calibration, images=images, runtimes=runtimes)
    _choice(PreprocessPath, preprocess, "preprocess")
    source_name = str(model_in_folder(model_or_onnx))
    calibration, images, note = default_calibration(calibration, images)
    # The export and the candidates go to one working folder, never into the current directory; an imported Hugging
    # Face folder's `model.onnx` is named after its folder, as `import` names it.
    stem = Path(model_or_onnx).name if Path(model_or_onnx).is_dir() else Path(source_name).stem
    folder = Path(workdir) if workdir is not None else Path("deploy") / (name or stem)
    folder.mkdir(parents=True, exist_ok=True)
    source = export_or_load(source_name, folder, checkpoint=checkpoint, progress=progress)
    candidates = deploy_candidates(
        source, folder, calibration=calibration, images=images, candidates=chosen_names, progress=progress
    )
    best = candidates[0].artifact  # the chosen one: deploy_candidates raises when none passed
    assert best is not None
    if labels is not None:
        best = best.with_(labels=read_labels(labels, best.num_classes))
    preprocessing, why = choose_preprocessing(best, preprocess, progress=progress)
    added = add_model(repo, best, name=name, preprocessing=preprocessing)
    notes = tuple(n for n in (note, why) if n)
    return Deployment(source, tuple(candidates), best, added, notes, preprocessing)


def check_deploy(
    model_or_onnx: str | Path,
    *,
    calibration: str | Path | None = None,
    images: str | Path | None = None,
    runtimes: str | Sequence[str | Variant | tuple[Runtime | str, Precision | str]] | None = None,
) -> tuple[Variant, ...]:
    """`deploy`'s input checked before any work (the candidates, the folders, the model's name); the candidates, rows
    of the variant table (`vitexport.variants.DEPLOYABLE`)."""
    from vitexport.export.onnx import looks_like_a_file

    candidates = _candidates(runtimes)
    for what, given in (("--calibration", calibration), ("--images", images)):
        if given is not None and not Path(given).is_dir():
            raise VitExportError(f"{what} {given} is not a folder of images")
    if not looks_like_a_file(str(model_in_folder(model_or_onnx))):
        from vitexport.models import get_spec

        get_spec(str(model_or_onnx))  # an unknown name: one line with suggestions
    return candidates


def model_in_folder(model_or_onnx: str | Path) -> str | Path:
    """A folder Optimum or `save_pretrained` left (imported with `vitexport import DIR`) stands for its `model.onnx`;
    anything else is itself."""
    from vitexport.export.hf_layout import MODEL_FILE

    given = Path(model_or_onnx)
    return given / MODEL_FILE if given.is_dir() and (given / MODEL_FILE).is_file() else model_or_onnx


def _candidates(runtimes: str | Sequence[str | Variant | tuple] | None) -> tuple[Variant, ...]:
    """Candidates from "openvino-int8,onnxruntime-fp32", or a list of such names, variants or (runtime, precision)."""
    if runtimes is None or isinstance(runtimes, str):
        return parse_variants(runtimes) if runtimes else DEPLOYABLE
    out: list[Variant] = []
    for item in runtimes:
        if isinstance(item, str):
            out += parse_variants(item)
        elif isinstance(item, Variant):
            out.append(item)
        else:
            runtime, precision = item
            out.append(get_variant(_choice(Runtime, runtime, "runtime"), _choice(Precision, precision, "precision")))
    if not out:
        raise VitExportError("runtimes names no candidate")
    refused = [v.key for v in out if v not in DEPLOYABLE]
    if refused:
        valid = ", ".join(v.key for v in DEPLOYABLE)
        raise VitExportError(f"deploy builds {valid}; not {', '.join(refused)}")
    return tuple(dict.fromkeys(out))


def _choice(enum: type[Enum], value: Any, what: str) -> Any:
    """An enum member from itself or its value, refused in one line listing the choices."""
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(str(m.value) for m in enum)
        raise VitExportError(f"{what} must be one of {valid}, not {value!r}") from None
