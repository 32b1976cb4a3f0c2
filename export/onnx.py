"""PyTorch -> ONNX with a dynamic batch axis, metadata, a full checker pass and a check on ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitexport import __version__, weights
from vitexport.artifacts import Format, ModelArtifact, publish
from vitexport.errors import ExportError, first_line
from vitexport.export.options import PROTOBUF_LIMIT, Heads
from vitexport.export.validate import TOLERANCES, DriftReport, Tolerance, check_drift, compare
from vitexport.fileio import staging
from vitexport.models import ModelSpec, create_model, get_spec
from vitexport.ort import ort_session
from vitexport.tasks import FEATURES, Task, get_task
from vitexport.tasks.base import FEATURES_HEAD, PIXELS

# Opset 18 is the default: the dynamo exporter's native opset (no version conversion), run by ONNX Runtime >= 1.14
# and parsed by TensorRT >= 8.6 alike, and the graph onnxscript's ORT fusions match. Opset 23 adds the standard
# `Attention` op (TensorRT >= 10.14 parses it, older ones do not), so it is a choice, not the default.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)
VALIDATION_BATCHES = (1, 4)


def export_task(spec: ModelSpec, heads: Heads) -> Task:
    """What the export computes: the model's task, or its features when asked for them instead of its head."""
    return FEATURES if heads is Heads.features else get_task(spec.task)


class _ExportHeads(nn.Module):
    """Returns (average, class head, distillation head) logits of a distilled DeiT."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_logits, dist_logits = self.model.forward_heads(x)  # type: ignore[operator]  # DeiT's, checked by the caller
        return (cls_logits + dist_logits) / 2, cls_logits, dist_logits


def export_onnx(
    name: str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    opset: int = DEFAULT_OPSET,
    img_size: int | None = None,
    batch_size: int | None = None,
    heads: Heads = Heads.avg,
    attention: str = "sdpa",
    validate: bool = True,
    external_data_threshold: int = PROTOBUF_LIMIT,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """Export a registered model to ONNX, check it with onnx.checker and validate it on ONNX Runtime.

    The graph is written and validated in a staging folder, then moved into place with its sidecar (written last,
    with the validation report); a failed validation raises ValidationError, and it or an interruption leaves the
    previous export and its sidecar as they were.
    """
    spec = get_spec(name).with_img_size(img_size)
    _check_request(spec, opset, heads, batch_size)
    output = Path(output)
    _check_writable(output)

    if pretrained and checkpoint is None:
        # Downloaded here rather than inside create_model: the sidecar records the hash of the file actually loaded.
        progress(f"downloading {spec.name}'s weights")
        checkpoint = weights.download_pretrained(spec)
    progress(f"building {spec.name}")
    task = export_task(spec, heads)
    model = create_model(spec.name, checkpoint=checkpoint, img_size=img_size, attention=attention, head=task.model_head)
    exported: nn.Module = _ExportHeads(model) if heads is Heads.all else model
    output_names = task.output_names(all_heads=heads is Heads.all)
    # A detector's mask is int64, as Hugging Face's image processor makes it: ONNX Runtime and Triton (TYPE_INT64)
    # take it as is, and every runtime has int64 inputs.
    mask_name = task.mask_input

    progress(f"exporting to ONNX opset {opset}")
    # A batch of 2 keeps the exporter from specialising the batch axis to the constant 1.
    (_, example), *_ = example_inputs(spec.img_size, batch_size or 2, mask_name, torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = None if batch_size else tuple({0: batch} for _ in example)
    program = _torch_export(exported, example, opset, output_names, dynamic)

    sha = weights.sha256_file(checkpoint) if checkpoint else None
    program.model.metadata_props.update(_metadata(spec, opset, sha))

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with staging(output) as staged:
        progress("saving and checking the graph")
        _save(program, staged, external=weight_bytes >= external_data_threshold)
        artifact = _artifact(spec, model, staged, task, output_names, batch_size, opset, sha)
        if validate:
            progress("validating on ONNX Runtime")
            reports = validate_onnx(artifact, exported)
            artifact = artifact.with_(validation={"passed": True, "reports": [r.to_dict() for r in reports]})
        return publish(artifact, output)


def _features(model: nn.Module) -> int:
    """The width of a features model's embedding (every family offering features sets `num_features`)."""
    width = getattr(model, "num_features", None)
    if not isinstance(width, int):
        raise ExportError(f"{type(model).__name__} does not say its embedding width (num_features)")
    return width


def _check_request(spec: ModelSpec, opset: int, heads: Heads, batch_size: int | None) -> None:
    if opset not in SUPPORTED_OPSETS:
        first, last = SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1
        raise ExportError(f"opset {opset} is not supported; choose {first}-{last}")
    if heads is Heads.all and not spec.distilled:
        raise ExportError(f"--heads all needs a distilled model; {spec.name} has one head")
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")


def _metadata(spec: ModelSpec, opset: int, sha: str | None) -> dict[str, str]:
    """What the ONNX file says of itself (`metadata_props`), for tools that read no sidecar (`vitexport import`)."""
    return {
        "vitexport.model": spec.name,
        "vitexport.preprocess": json.dumps(spec.preprocess.to_dict()),
        "vitexport.opset": str(opset),
        "vitexport.checkpoint_sha256": sha or "",
        "vitexport.version": __version__,
    }


def _artifact(
    spec: ModelSpec,
    model: nn.Module,
    path: Path,
    task: Task,
    output_names: tuple[str, ...],
    batch_size: int | None,
    opset: int,
    sha: str | None,
) -> ModelArtifact:
    """The export's artifact, before validation."""
    return ModelArtifact(
        path=path,
        format=Format.onnx,
        model=spec.name,
        preprocess=spec.preprocess,
        # The output's width: the classes, or the embedding's size (serving sizes its outputs from it).
        num_classes=_features(model) if task.model_head == FEATURES_HEAD else spec.num_classes,
        output_names=output_names,
        mask_name=task.mask_input,
        batch_size=batch_size,
        opset=opset,
        checkpoint_sha256=sha,
        task=task.name,
    )


def example_inputs(
    size: int, batch: int, mask_name: str | None, generator: torch.Generator
) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(label, {input name: tensor}) of random images, in the model's argument order. A detector's come twice: on a
    full canvas (label "") and padded (" (padded)": each image's own valid height and width, the pixels outside
    zero as the preprocessing leaves them), so validation sees the mask change the outputs."""
    x = torch.randn(batch, 3, size, size, generator=generator)
    if mask_name is None:
        return [("", {PIXELS: x})]
    full = torch.ones(batch, size, size, dtype=torch.int64)
    padded = torch.zeros(batch, size, size, dtype=torch.int64)
    for i, (h, w) in enumerate(torch.randint(size // 2, size, (batch, 2), generator=generator).tolist()):
        padded[i, :h, :w] = 1
    return [
        ("", {PIXELS: x, mask_name: full}),
        (" (padded)", {PIXELS: x * padded[:, None], mask_name: padded}),
    ]


def looks_like_a_file(model_or_file: str) -> bool:
    """A path-like argument is a file even when it is missing: "no such file", not "unknown model 'x.onnx'"."""
    path = Path(model_or_file)
    return path.exists() or "/" in model_or_file or path.suffix in (".onnx", ".json", ".xml", ".plan")


def export_or_load(
    model_or_file: str,
    folder: Path,
    *,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """MODEL_OR_ONNX: an artifact's model file or sidecar, or a registered model exported to fp32 ONNX in `folder`."""
    from vitexport.artifacts import load_artifact

    if looks_like_a_file(model_or_file):
        if checkpoint is not None:
            raise ExportError("--checkpoint applies to a registered model name, not to an ONNX file")
        return load_artifact(model_or_file)
    return export_onnx(model_or_file, folder / f"{model_or_file}.onnx", checkpoint=checkpoint, progress=progress)


def _check_writable(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name ending in .onnx")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output folder {parent} is not writable")


def _torch_export(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    opset: int,
    output_names: tuple[str, ...],
    dynamic_shapes: tuple[dict[int, Any], ...] | None,
) -> torch.onnx.ONNXProgram:
    # The exporter logs its progress with emoji to stdout and warns about things users cannot act on.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                tuple(example.values()),
                dynamo=True,
                opset_version=opset,
                input_names=list(example),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                optimize=True,
            )
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {first_line(e)}") from e
    if program is None:  # only when asked to write a file, which this export never does
        raise ExportError("torch.onnx.export returned no program")
    produced = program.model.opset_imports.get("", None)
    if produced != opset:
        raise ExportError(f"the exporter produced opset {produced}, not {opset}")
    return program


def _save(program: torch.onnx.ONNXProgram, output: Path, *, external: bool) -> None:
    """Save through the exporter's IR (no protobuf copy of the weights), then run onnx.checker's full check."""
    import onnx
    import onnx_ir as ir

    data_file = output.with_name(output.name + ".data")
    try:
        # onnx_ir's writer directly: ONNXProgram.save does the same plus work that costs deit_base 1.5 s here.
        ir.save(program.model, output, external_data=data_file.name if external else None)
        # full_check runs shape inference too; the path form also works for models with external data.
        onnx.checker.check_model(str(output), full_check=True)
    except OSError as e:
        raise ExportError(f"cannot write {output}: {e.strerror or e}") from None
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        # full_check's shape inference raises its own error type, not a subclass of ValidationError.
        raise ExportError(f"onnx.checker rejected the exported graph: {first_line(e)}") from None


def validate_onnx(
    artifact: ModelArtifact,
    reference: nn.Module,
    *,
    batch_sizes: tuple[int, ...] = VALIDATION_BATCHES,
    tolerance: Tolerance = TOLERANCES["fp32"],
    seed: int = 0,
) -> list[DriftReport]:
    """Compare ONNX Runtime with PyTorch on random inputs at each batch size (detectors: padded and not); raise on
    any failed check."""
    session = ort_session(artifact.path)
    batch_sizes = (artifact.batch_size,) if artifact.batch_size else batch_sizes
    generator = torch.Generator().manual_seed(seed)
    reports = []
    for b in batch_sizes:
        for label, inputs in example_inputs(artifact.preprocess.input_size, b, artifact.mask_name, generator):
            with torch.inference_mode():
                expected = reference(*inputs.values())
            expected = expected if isinstance(expected, tuple) else (expected,)
            feeds = {artifact.input_name: inputs[PIXELS].numpy()}
            if artifact.mask_name is not None:
                feeds[artifact.mask_name] = inputs[artifact.mask_name].numpy()
            got = session.run(list(artifact.output_names), feeds)
            for name, e, g in zip(artifact.output_names, expected, got, strict=True):
                reports.append(compare(name + label, e.numpy(), np.asarray(g)))
    check_drift(reports, tolerance)
    return reports
