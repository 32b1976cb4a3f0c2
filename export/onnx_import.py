"""`vitexport import`: an image classifier (or embedding model) ONNX that this tool did not write becomes an artifact.

timm's exporter, Hugging Face Optimum and `torch.onnx.export` of a user's own model all write ONNX files with no
sidecar. This stage checks the graph is an image model the later stages can run (one float input N x 3 x H x W,
one logits output N x C or an embeddings output N x D), takes the preprocessing from the file's own metadata, a
Hugging Face `preprocessor_config.json` or the user's flags (never assumed), and writes the sidecar. Input and
output names are kept as the file has them; every later stage reads them from the sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitexport.artifacts import Format, ModelArtifact, sidecar_path
from vitexport.errors import ArtifactError, first_line
from vitexport.export.hf_layout import MODEL_FILE, HubConfig, find_layout, head, read_hub_config, read_json
from vitexport.fileio import check_user_file, read_user_text
from vitexport.preprocess import INTERPOLATIONS, PreprocessConfig, from_hf_processor
from vitexport.preprocess.config import RESIZE_BACKENDS
from vitexport.tasks import CLASSIFICATION, FEATURES

if TYPE_CHECKING:
    import onnx

# Ops that only attention has; a graph without them is treated as a convnet by the optimizer (INT8 recipes).
ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention"}
# Bound on a labels file a user names: far above any real one (ImageNet-21k's 21,843 class names are 0.5 MB); the
# Hugging Face JSON files' is hf_layout's.
MAX_LABELS_BYTES = 16 << 20


@dataclass(frozen=True)
class PreprocessFlags:
    """What the user said on the command line; None: not said (another source, or an error if none has it)."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None


def import_onnx(
    path: str | Path,
    *,
    name: str | None = None,
    flags: PreprocessFlags = PreprocessFlags(),
    preprocess_config: str | Path | None = None,
    labels: str | Path | None = None,
    output: str | None = None,
    embeddings: bool = False,
    hf_backend: str | None = None,
) -> ModelArtifact:
    """Check `path` is an image model, work out its preprocessing, write its sidecar; the artifact. `output`: the
    output to use when the graph has several (default: the only one, or `logits`); `embeddings`: it is a pooled
    embedding, not class logits; `hf_backend` ("pil", "torchvision"): the image processor's, as transformers 5's
    `AutoImageProcessor(backend=)` (default: what the transformers that wrote the folder loads)."""
    import onnx

    layout = find_layout(Path(path))
    path = layout.onnx
    check_user_file(path, "model", error=ArtifactError)
    if sidecar_path(path).exists():
        raise ArtifactError(f"{path} already has a sidecar ({sidecar_path(path).name}): it is an artifact already")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file: onnx raises DecodeError and others
        raise ArtifactError(f"{path} is not a readable ONNX model: {first_line(e)}") from None
    hub = read_hub_config(layout.config) if layout.config else None
    input_name, batch, size = _image_input(model, path, hub)
    if hub is not None:
        said = head(hub, {o.name: _dims(o) for o in model.graph.output}, embeddings)
        embeddings, output = said.embeddings, output or said.output
    output_name, width = _output(model, path, output)
    metadata = {p.key: p.value for p in model.metadata_props}
    preprocess = _preprocess(
        metadata, preprocess_config or layout.preprocessor_config, flags, size, path, hf_backend, hub
    )
    class_names = _class_names(labels, hub, width)
    if embeddings and labels is not None:
        raise ArtifactError("--labels names classes; an embeddings output has none")
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    opsets = {o.domain: o.version for o in model.opset_import}
    artifact = ModelArtifact(
        path=path,
        format=Format.onnx,
        model=name or (path.parent.name if path.name == MODEL_FILE else path.stem),
        preprocess=preprocess,
        num_classes=width,
        input_name=input_name,
        output_names=(output_name,),
        batch_size=batch,
        opset=opsets.get("", opsets.get("ai.onnx")),
        task=(FEATURES if embeddings else CLASSIFICATION).name,
        family="transformer" if ops & ATTENTION_OPS else "convnet",
        labels=class_names,
        details={"producer": f"{model.producer_name} {model.producer_version}".strip() or "unknown"},
    )
    artifact = artifact.with_files()  # refuses external data outside the file's folder before anything reads it
    artifact = artifact.with_(validation=_check_runs(artifact))
    artifact.save()
    return artifact


def graph_io(model: onnx.ModelProto, path: Path, output: str | None = None) -> tuple[str, int | None, str, int]:
    """(input name, square side or None, output name, output width) of an image model's graph; ArtifactError in one
    line when it is not one."""
    input_name, _, size = _image_input(model, path, None)
    output_name, width = _output(model, path, output)
    return input_name, size, output_name, width


def _check_runs(artifact: ModelArtifact) -> dict[str, Any]:
    """An imported file is its own fp32 reference (nothing was derived from it, so there is no drift to gate); what
    can be checked is that ONNX Runtime runs it at the batch sizes it takes and returns finite N x C outputs."""
    import numpy as np

    from vitexport.ort import ort_session

    try:
        session = ort_session(artifact.path)
    except Exception as e:
        raise ArtifactError(f"ONNX Runtime cannot load {artifact.path.name}: {first_line(e)}") from None
    S, runs = artifact.preprocess.input_size, []
    for batch in (artifact.batch_size,) if artifact.batch_size else (1, 2):
        x = np.random.default_rng(0).standard_normal((batch, 3, S, S)).astype(np.float32)
        try:
            (y,) = session.run(list(artifact.output_names), {artifact.input_name: x})
        except Exception as e:
            raise ArtifactError(
                f"{artifact.path.name} fails on a {batch} x 3 x {S} x {S} input: {first_line(e)}"
            ) from None
        if y.shape != (batch, artifact.num_classes) or not np.isfinite(y).all():
            raise ArtifactError(
                f"{artifact.path.name} returned {y.shape} (finite: {np.isfinite(y).all()}) at batch {batch}"
            )
        runs.append({"batch_size": batch, "output_shape": list(y.shape)})
    return {"passed": True, "imported": True, "reference": "itself (imported, not derived)", "runs": runs}


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _image_input(model: onnx.ModelProto, path: Path, hub: HubConfig | None) -> tuple[str, int | None, int | None]:
    """(name, fixed batch or None, square side or None) of the one image input. A symbolic channel dim (Optimum
    writes every dim symbolic) is taken as 3, which the run at import checks."""
    from onnx import TensorProto

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ArtifactError(f"{path.name} has {len(inputs)} inputs ({names}); an image model has one, N x 3 x H x W")
    (image,) = inputs
    dtype = image.type.tensor_type.elem_type
    dims = _dims(image)
    if dtype != TensorProto.FLOAT or len(dims) != 4 or not (dims[1] in (3, None) or isinstance(dims[1], str)):
        kind = TensorProto.DataType.Name(dtype).lower()
        raise ArtifactError(f"{path.name}'s input {image.name} is {kind} {dims}; expected float N x 3 x H x W")
    if hub is not None and hub.num_channels not in (None, 3):
        raise ArtifactError(f"{hub.path} says num_channels {hub.num_channels}; an image model here takes 3 (RGB)")
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ArtifactError(f"{path.name} takes {h} x {w} images; square inputs only (the crop is square)")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return image.name, batch, h if isinstance(h, int) and h > 0 else None


def _output(model: onnx.ModelProto, path: Path, wanted: str | None) -> tuple[str, int]:
    """(name, width) of the logits or embeddings output: N x C with C fixed."""
    outputs = {o.name: o for o in model.graph.output}
    if wanted is not None and wanted not in outputs:
        raise ArtifactError(f"{path.name} has no output {wanted!r}; it has {', '.join(outputs)}")
    if wanted is None:
        if len(outputs) == 1:
            wanted = next(iter(outputs))
        elif "logits" in outputs:
            wanted = "logits"
        else:
            raise ArtifactError(f"{path.name} has outputs {', '.join(outputs)}: choose one with --output")
    dims = _dims(outputs[wanted])
    if len(dims) != 2 or not isinstance(dims[1], int) or dims[1] < 1:
        raise ArtifactError(f"{path.name}'s output {wanted} is {dims}; expected N x C (logits) or N x D (embeddings)")
    return wanted, dims[1]


def _preprocess(
    metadata: dict[str, str],
    config: str | Path | None,
    flags: PreprocessFlags,
    size: int | None,
    path: Path,
    backend: str | None = None,
    hub: HubConfig | None = None,
) -> PreprocessConfig:
    """The file's own vitexport metadata, else a Hugging Face preprocessor config, else the flags; the flags override
    whatever they name. The input size must agree with the graph's."""
    _check_backend(backend, config)
    found: dict[str, Any] = {}
    if "vitexport.preprocess" in metadata:
        found = json.loads(metadata["vitexport.preprocess"])
    if config is not None:  # the whole description: nothing of the metadata's may survive beside it
        # A plain processor type is read as the transformers that wrote the folder (config.json) loads it.
        writer_backend = hub.processor_backend if hub else None
        found = _from_hugging_face(Path(config), size, backend, writer_backend)
        _check_overrides(found, flags, Path(config).name)
    said = {k: v for k, v in vars(flags).items() if v is not None}
    found |= {"input_size" if k == "size" else k: v for k, v in said.items()}
    if size is not None and found.setdefault("input_size", size) != size:
        raise ArtifactError(f"{path.name} takes {size}px images, the preprocessing says {found['input_size']}px")
    missing = [k for k in ("mean", "std", "input_size") if k not in found]
    if missing:
        flag = {"mean": "--mean", "std": "--std", "input_size": "--size"}
        raise ArtifactError(
            f"{path.name} does not say its {', '.join(missing).replace('input_size', 'input size')}: give "
            f"--preprocess-config preprocessor_config.json or {' '.join(flag[m] for m in missing)}"
        )
    base = PreprocessConfig(int(found["input_size"]), tuple(found["mean"]), tuple(found["std"]))
    if len(base.mean) != 3 or len(base.std) != 3 or min(base.std) <= 0:
        raise ArtifactError(f"mean and std take three values each, std > 0: got {base.mean} and {base.std}")
    crop_pct = float(found.get("crop_pct", base.crop_pct))
    if not 0 < crop_pct <= 1:
        raise ArtifactError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    interpolation = found.get("interpolation", base.interpolation)
    if interpolation not in INTERPOLATIONS:
        raise ArtifactError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, not {interpolation!r}")
    # from_dict: the keys beyond these (a processor's fixed resize, crop rounding, channel order...) come along.
    return PreprocessConfig.from_dict(found | {"crop_pct": crop_pct, "interpolation": interpolation})


def _check_backend(asked: str | None, config: str | Path | None) -> None:
    """--hf-backend names a known backend, of an image processor there is."""
    if asked is None:
        return
    if asked not in RESIZE_BACKENDS:
        raise ArtifactError(f"--hf-backend must be one of {', '.join(RESIZE_BACKENDS)}, not {asked!r}")
    if config is None:
        raise ArtifactError(
            "--hf-backend is an image processor's: give its preprocessor_config.json (none is beside it)"
        )


def _check_overrides(found: dict[str, Any], flags: PreprocessFlags, config: str) -> None:
    """Flags that would contradict an image processor's geometry are refused, not half-applied: its output size is
    fixed, and so is its resize (a crop fraction has nothing left to set). mean, std and the filter may be changed."""
    if flags.size is not None and flags.size != found["input_size"]:
        S = found["input_size"]
        raise ArtifactError(f"--size {flags.size}, but {config} makes {S} x {S} images: drop one of them")
    if flags.crop_pct is not None and found.get("resize") is not None:
        raise ArtifactError(f"--crop-pct, but {config} resizes to {found['resize']} itself: drop one of them")


def _from_hugging_face(path: Path, size: int | None, backend: str | None, writer_backend: str | None) -> dict[str, Any]:
    """A transformers image processor's preprocessor_config.json in PreprocessConfig's terms (vitexport.preprocess.hf:
    exactly, or refused in one line naming the key)."""
    d = read_json(path, "image processor's config")
    try:
        return from_hf_processor(d, input_size=size, backend=backend, writer_backend=writer_backend).to_dict()
    except ArtifactError as e:
        raise ArtifactError(f"{path.name}: {e}") from None


def _class_names(labels: str | Path | None, hub: HubConfig | None, width: int) -> tuple[str, ...] | None:
    """--labels, else config.json's id2label; config.json must agree with the graph on the number of classes even
    when --labels overrides its names (a config.json that disagrees belongs to another model)."""
    if hub is not None and hub.labels is not None and len(hub.labels) != width:
        raise ArtifactError(f"{hub.path} names {len(hub.labels)} classes (id2label); the graph has {width} outputs")
    if labels is not None:
        return read_labels(labels, width)
    return hub.labels if hub is not None else None


def read_labels(path: str | Path, classes: int) -> tuple[str, ...]:
    """Class names, one per line, exactly one per output."""
    text = read_user_text(path, "labels", limit=MAX_LABELS_BYTES, error=ArtifactError)
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != classes:
        raise ArtifactError(f"{path} names {len(names)} classes; the model has {classes} outputs")
    return names


def parse_floats(flag: str, text: str | None, count: int = 3) -> tuple[float, ...] | None:
    """`--mean 0.485,0.456,0.406`: `count` comma-separated numbers."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ArtifactError(f"{flag} takes {count} comma-separated numbers, not {text!r}") from None
    if len(values) != count:
        raise ArtifactError(f"{flag} takes {count} comma-separated numbers, not {text!r}")
    return values


__all__: Sequence[str] = ("PreprocessFlags", "import_onnx", "parse_floats", "read_labels")
