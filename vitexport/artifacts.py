"""Artifacts passed between stages: a model file plus a JSON sidecar (`<file>.json`) describing it, so that every
command can run alone on the previous stage's output. Torch-free: the serving side reads these too.

The sidecar records the size and sha256 of the model file and its companions (`files`), and every consumer loads
artifacts through `load_artifact`, which refuses files that changed since: a sidecar vouches only for the bytes it was
written for. Stages write their files in a staging folder and `publish` them once their checks pass."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from vitexport import __version__
from vitexport.errors import ArtifactError
from vitexport.fileio import check_user_file, move_into_place, open_user_file, read_user_text, write_atomic
from vitexport.preprocess import PreprocessConfig
from vitexport.tasks import TASKS
from vitexport.tasks.base import PIXELS

# The sidecar's layout, written into every sidecar. 1: sidecars without the field (vitexport 0.1); 2: the field;
# 3: the preprocessing may carry resize, crop, crop_rounding, rescale, channel_order and resize_backend (an old
# reader drops them).
# A reader refuses a sidecar from a newer layout: it would drop fields it does not know and serve the rest.
SCHEMA_VERSION = 3


class Format(str, Enum):
    """What an artifact's model file is."""

    onnx = "onnx"
    openvino = "openvino"  # OpenVINO IR: an .xml with its .bin
    tensorrt = "tensorrt"  # a serialized TensorRT engine (.plan)

    def __str__(self) -> str:  # the value in messages and f-strings, as the plain strings these replace
        return self.value


class Precision(str, Enum):
    """The precision a model computes in, the one name every stage uses (export, optimize, gate, TensorRT, serving)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ModelArtifact:
    path: Path  # the model file (ONNX, OpenVINO IR .xml, TensorRT plan)
    format: Format
    model: str  # registry name
    preprocess: PreprocessConfig
    num_classes: int  # detectors: the object classes (their logits have one more, "no object")
    input_name: str = PIXELS
    output_names: tuple[str, ...] = ("logits",)
    # Detectors: the second input, (N, S, S) int64, 1 where the image is and 0 on the canvas's padding. None: the image
    # is the only input (classifiers, and every sidecar written before detection).
    mask_name: str | None = None
    batch_size: int | None = None  # None: dynamic batch axis
    precision: Precision = Precision.fp32
    opset: int | None = None
    checkpoint_sha256: str | None = None
    source: str | None = None  # sidecar of the artifact this one was derived from
    validation: dict[str, Any] | None = field(default=None, compare=False)
    # What later stages read of how this artifact was made (older sidecars kept these in `details`):
    fuse_attention: str | None = None  # "ort" (contrib ops), "onnx" (the Attention op) or "none"
    io_type: Precision = Precision.fp32  # fp16 graphs: the dtype of their input and outputs
    quant_method: str | None = None  # int8: "dynamic", "static" (Q/DQ) or "nncf-ptq"
    batch_profile: tuple[int, int, int] | None = None  # engines: the (min, opt, max) batch they were built for
    compute_capability: str | None = None  # engines: the GPU architecture they run on
    gate_failure: str | None = None  # a variant kept though it failed its gate (the benchmark's ungated rows): why
    # What the model does, a name in vitexport.tasks.TASKS: "classification" (logits, num_classes of them),
    # "features" (an embedding of num_classes values) or "detection" (logits (N, Q, num_classes + 1), pred_boxes).
    task: str = "classification"
    # Models from outside the registry (`vitexport import`): "transformer" or "convnet", and their class names.
    family: str | None = None
    labels: tuple[str, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # the stage's record, for people to read
    # {file name beside the sidecar: {"size", "sha256"}}: the model file and its companions as the stage wrote them.
    # None: a sidecar of a vitexport before this field, loaded unverified.
    files: dict[str, dict[str, Any]] | None = field(default=None, compare=False)
    vitexport_version: str = __version__

    def __post_init__(self) -> None:
        # Stages and old sidecars pass plain strings; a value outside the enums makes a malformed artifact.
        object.__setattr__(self, "format", Format(self.format))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "io_type", Precision(self.io_type))
        if self.batch_profile is not None:
            object.__setattr__(self, "batch_profile", tuple(int(b) for b in self.batch_profile))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if (TASKS[self.task].mask_input is not None) != (self.mask_name is not None):
            raise ValueError(f"a {self.task} artifact {'has' if self.mask_name is None else 'has no'} mask input")

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    @property
    def passed_gate(self) -> bool:
        """Whether the sidecar records a passed check against the fp32 reference. Every stage writes its sidecar only
        after its checks pass, but a sidecar from a run that skipped validation, an older vitexport or a hand edit
        must still say so before the artifact is served or ranked."""
        return bool(self.validation and self.validation.get("passed"))

    def with_(self, **changes: Any) -> ModelArtifact:
        if "path" in changes and "files" not in changes:
            changes["files"] = None  # the record was of the other file; save() records the new one
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {"schema_version": SCHEMA_VERSION} | asdict(self)
        d["path"] = self.path.name  # relative to the sidecar, so artifacts can be moved together
        d["preprocess"] = self.preprocess.to_dict()
        d["output_names"] = list(self.output_names)
        d["batch_profile"] = list(self.batch_profile) if self.batch_profile else None
        d["labels"] = list(self.labels) if self.labels else None
        return d

    def with_files(self) -> ModelArtifact:
        """This artifact recording its model file and companions as they are now."""
        return replace(self, files=describe_files(self.path, self.format))

    def save(self) -> Path:
        """Write the sidecar atomically beside the model file, recording the files as they are now."""
        self.with_files()._write_sidecar()
        return self.sidecar

    def _write_sidecar(self) -> None:
        write_atomic(self.sidecar, json.dumps(self.to_dict(), indent=2) + "\n")


def publish(staged: ModelArtifact, output: Path) -> ModelArtifact:
    """A stage's checked artifact, written in `fileio.staging(output)`, moved into place as `output`, its sidecar
    last. The old sidecar goes first: at no moment does a sidecar describe files it was not written for, and an
    interruption before this leaves the previous pair as it was."""
    recorded = staged.with_files()  # hashed where they were checked
    sidecar_path(output).unlink(missing_ok=True)
    move_into_place(staged.path, output)
    stale = output.with_name(output.name + ".data")  # an earlier export's external weights, unused by this graph
    if stale.name not in (recorded.files or {}):
        stale.unlink(missing_ok=True)
    published = recorded.with_(path=output, files=recorded.files)  # the same files, renamed
    published._write_sidecar()
    return published


# What a model is, which every artifact a stage derives from it (a variant, an engine) keeps: forgetting one of these
# once served an imported model with ImageNet's class names.
CARRIED_OVER = (
    "model",
    "preprocess",
    "num_classes",
    "input_name",
    "output_names",
    "mask_name",
    "task",
    "checkpoint_sha256",
    "family",
    "labels",
)


def derived(origin: ModelArtifact, /, **made: Any) -> ModelArtifact:
    """A new artifact a stage made from `origin`: what the model is carries over (CARRIED_OVER), how this file was
    made (path, format, precision, source, validation, details, ...) is the stage's to say."""
    return ModelArtifact(**({name: getattr(origin, name) for name in CARRIED_OVER} | made))


MAX_SIDECAR_BYTES = 64 << 20  # a sidecar is JSON of a few KB; a bigger file is not one, and is not read whole


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def load_artifact(path: str | Path) -> ModelArtifact:
    """An artifact from its model file or its sidecar, its files checked against the sidecar's record."""
    path = Path(path)
    sidecar = path if path.name.endswith(".json") else sidecar_path(path)
    if not sidecar.is_file():
        if not path.exists():
            raise ArtifactError(f"no such file: {path}")
        raise ArtifactError(f"no artifact sidecar {sidecar} (was {path} written by vitexport?)")
    try:
        d = _from_legacy_details(
            json.loads(read_user_text(sidecar, "sidecar", limit=MAX_SIDECAR_BYTES, error=ArtifactError))
        )
        schema = d.get("schema_version", 1)
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            raise ArtifactError(f"sidecar {sidecar} was written by a newer vitexport (schema {schema}); upgrade")
        known = {f.name for f in fields(ModelArtifact)}
        d = {k: v for k, v in d.items() if k in known}
        d["path"] = sidecar.parent / beside(d["path"], sidecar)
        d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        d["output_names"] = tuple(d["output_names"])
        artifact = ModelArtifact(**d)
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"sidecar {sidecar} is malformed: {e}") from None
    if not artifact.path.exists():
        raise ArtifactError(f"{sidecar} describes {artifact.path}, which does not exist")
    check_user_file(artifact.path, "model file", error=ArtifactError)  # an older sidecar's, unrecorded: a FIFO hangs
    verify_files(artifact)
    return artifact


def beside(name: Any, sidecar: Path) -> str:
    """A file name the sidecar lists, which must be a plain name in its own folder: a sidecar pointing elsewhere
    (`../x`, `/etc/passwd`) would have any readable file copied into a model repository."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ArtifactError(f"sidecar {sidecar} names {name!r}: a sidecar lists only file names in its own folder")
    return name


def verify_files(artifact: ModelArtifact) -> None:
    """Refuse an artifact whose files are not the ones its sidecar recorded (truncated, replaced, edited)."""
    if artifact.files is None:
        return  # an older vitexport's sidecar: nothing recorded to check against
    folder = artifact.path.parent
    if not isinstance(artifact.files, dict) or artifact.path.name not in artifact.files:
        raise ArtifactError(f"sidecar {artifact.sidecar} is malformed: its files do not list {artifact.path.name}")
    for name, recorded in artifact.files.items():
        path = folder / beside(name, artifact.sidecar)
        try:
            if path.resolve().parent != folder.resolve():
                raise ArtifactError(f"{name} is a link out of its folder {folder}; copy the file there instead")
            actual = file_record(path)
        except FileNotFoundError:
            raise ArtifactError(f"{name}, listed in {artifact.sidecar.name}, is missing; export it again") from None
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
        difference = _difference(actual, recorded)
        if difference:
            raise ArtifactError(
                f"{name} does not match its sidecar ({difference}): it changed after vitexport wrote it; "
                "export it again"
            )


def _difference(actual: dict[str, Any], recorded: Any) -> str | None:
    if not isinstance(recorded, dict):
        return f"recorded as {recorded!r}"
    if actual["size"] != recorded.get("size"):
        return f"size {actual['size']} != {recorded.get('size')}"
    if actual["sha256"] != recorded.get("sha256"):
        return f"sha256 {actual['sha256'][:12]}... != {str(recorded.get('sha256'))[:12]}..."
    return None


def describe_files(model_file: Path, fmt: Format | str) -> dict[str, dict[str, Any]]:
    """{name: {"size", "sha256"}} of the model file and the companions it cannot run without."""
    names = [model_file.name, *companion_names(model_file, Format(fmt))]
    return {name: file_record(model_file.with_name(name)) for name in names}


def companion_names(model_file: Path, fmt: Format) -> list[str]:
    """Files the model file refers to, all beside it: ONNX external data, OpenVINO IR's weights."""
    if fmt is Format.openvino:
        weights = model_file.with_suffix(".bin")
        return [weights.name] if weights.is_file() else []
    if fmt is Format.onnx:
        return _onnx_external_data(model_file)
    return []


def _onnx_external_data(model_file: Path) -> list[str]:
    """The external data files an ONNX graph names, and `<file>.data` (the name vitexport's stages give theirs);
    refused if any is outside its folder (ONNX Runtime and the repository copy would read whatever it names)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    data = model_file.with_name(model_file.name + ".data")
    locations = {data.name} if data.is_file() else set()
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception:  # not ONNX: telling is the stages' job (they parse it); its own bytes are still recorded
        return sorted(locations)
    locations |= {ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)}
    for location in sorted(locations):
        if Path(location).name != location or location in ("", ".", ".."):
            raise ArtifactError(
                f"{model_file.name} keeps weights in {location!r}: external data must be a file beside the graph"
            )
    return sorted(locations)


# (device, inode, size, mtime_ns) -> sha256. Not the path: a rename keeps the key, so a file hashed in its staging
# folder is not hashed again once moved into place; any write changes the mtime (or the inode, when replaced).
_HASHES: dict[tuple[int, int, int, int], str] = {}


def file_record(path: Path) -> dict[str, Any]:
    """{"size", "sha256"} of a file, the hash cached in-process so that loading a large model again costs a stat.
    A regular file only: a FIFO named as a model's external data would block the open for ever."""
    os.stat(path)  # FileNotFoundError: the callers name the missing file
    with open_user_file(path, "model file", error=ArtifactError) as f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _HASHES:
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            _HASHES[key] = digest.hexdigest()
    return {"size": st.st_size, "sha256": _HASHES[key]}


def _from_legacy_details(d: dict[str, Any]) -> dict[str, Any]:
    """Sidecars written before the typed fields kept them in `details`: read them from there."""
    details = d.get("details") or {}
    profile = details.get("profile")
    legacy = {
        "fuse_attention": details.get("fuse_attention"),
        "io_type": details.get("io_type"),
        "quant_method": (details.get("quantization") or {}).get("method"),
        "batch_profile": [profile[k] for k in ("min", "opt", "max")] if isinstance(profile, dict) else None,
        "compute_capability": details.get("compute_capability"),
        "gate_failure": details.get("gate_failure"),
    }
    d = {k: v for k, v in legacy.items() if v is not None} | {k: v for k, v in d.items() if v is not None}
    if d.pop("head", None) == "features":  # before tasks, an embedding model was a classification with this head
        d["task"] = "features"
    return d
