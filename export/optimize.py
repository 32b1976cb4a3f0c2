"""The optimize stage: an fp32 ONNX artifact -> a fused, FP16, BF16 or INT8 variant for ONNX Runtime or OpenVINO,
checked by the accuracy gate against the fp32 source before its sidecar is written.

| runtime     | fp32         | fp16                           | bf16                | int8                          |
|-------------|--------------|--------------------------------|---------------------|-------------------------------|
| onnxruntime | fused ONNX   | FP16 ONNX (the TensorRT graph) | - (no BF16 kernels) | dynamic (ViT), Q/DQ (ResNet)  |
| openvino    | IR, f32 hint | IR, f16 hint                   | IR, bf16 hint       | NNCF post-training quantized  |
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitexport.artifacts import ModelArtifact, Precision, derived, publish
from vitexport.errors import ArtifactError, ExportError, first_line
from vitexport.export.builders import onnxruntime_variant, openvino_variant
from vitexport.export.fp16 import IOType
from vitexport.export.fusion import Fusion
from vitexport.export.gate import (
    GateReport,
    ImageSet,
    Run,
    check_gate,
    evaluate,
    gate_photos,
    hold_out,
    load_image_folder,
)
from vitexport.export.openvino import int8_recipes
from vitexport.export.options import Runtime
from vitexport.export.quantize import QuantMethod, default_method, is_convnet
from vitexport.export.runners import load_runner
from vitexport.fileio import staging
from vitexport.tasks import task_of
from vitexport.variants import get_variant

if TYPE_CHECKING:
    import onnx

CALIBRATION_LIMIT = 300  # NNCF's default subset size: more images barely move the ranges and cost minutes
HOLD_OUT_EVERY = 5  # without --images, one calibration image in five is kept back for the accuracy gate
MIN_SPLIT = 10  # a smaller calibration folder is all used to calibrate


def default_fusion(runtime: Runtime, precision: Precision) -> Fusion:
    """ORT's contrib ops for ONNX Runtime; the standard Attention op for FP16, the graph TensorRT consumes; none for
    OpenVINO, which reads standard ONNX only and fuses attention itself."""
    if runtime is Runtime.openvino:
        return Fusion.none
    return Fusion.onnx if precision is Precision.fp16 else Fusion.ort


def default_output(source: Path, runtime: Runtime, precision: Precision, fusion: Fusion) -> Path:
    stem = source.name.removesuffix(".onnx")
    tag = "" if fusion is Fusion.none else f"-{fusion.value}"
    return source.with_name(f"{stem}.{runtime.value}{tag}-{precision.value}{get_variant(runtime, precision).suffix}")


def optimize(
    artifact: ModelArtifact,
    *,
    runtime: Runtime = Runtime.onnxruntime,
    precision: Precision = Precision.fp32,
    fuse_attention: Fusion | None = None,
    calibration: str | Path | None = None,
    images: str | Path | None = None,
    output: str | Path | None = None,
    io_type: IOType = IOType.fp32,
    quant_method: QuantMethod | None = None,
    calibration_limit: int = CALIBRATION_LIMIT,
    validate: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """Write the variant and its sidecar; `details["op_counts"]` holds the op counts before and after.

    The gate compares the variant with the fp32 source on ONNX Runtime (itself validated against PyTorch at export)
    on random inputs and on `images` (or else images held out of the calibration folder); over budget it raises
    ValidationError. The variant is written and gated in a staging folder and moved into place with its sidecar only
    once it passed: a failure or an interruption leaves an earlier variant at `output` and its sidecar as they were.
    """
    _check_source(artifact)
    # The fusion rewriters match the graphs our exporter writes; an imported graph (timm's TorchScript export, Optimum)
    # is fused only when asked, and then fails loudly where nothing matched.
    imported = artifact.family is not None
    fusion = fuse_attention or (Fusion.none if imported else default_fusion(runtime, precision))
    _check_combination(runtime, precision, fusion, io_type)
    output = _checked_output(artifact, output, runtime, precision, fusion)
    _check_described(artifact)

    from vitexport.models import get_spec  # torch: only when the family is not on the sidecar

    family = artifact.family or get_spec(artifact.model).family  # imported models carry theirs
    needs_calibration = precision is Precision.int8 and (
        runtime is Runtime.openvino or (quant_method or default_method(family)) is QuantMethod.static
    )
    if needs_calibration and calibration is None:
        raise ExportError(f"{runtime.value} int8 for {family} needs calibration images: give --calibration DIR")
    calib, eval_images, gate_images = _calibration_and_gate_images(
        artifact, calibration, images, needs_calibration, validate, calibration_limit, progress
    )

    def build(staged: Path, recipe: Any) -> dict[str, Any]:
        if runtime is Runtime.onnxruntime:
            return onnxruntime_variant(
                artifact, staged, precision, fusion, io_type, quant_method, family, calib, progress
            )
        # _check_combination let only the two runtimes optimize builds through
        return openvino_variant(artifact, staged, precision, family, calib, recipe, progress)

    # OpenVINO INT8 has more than one recipe; the first whose variant passes the gate is kept (without the gate,
    # the first). Every other runtime and precision has one way to build it.
    openvino_int8 = (runtime, precision) == (Runtime.openvino, Precision.int8)
    recipes = int8_recipes(transformer=not is_convnet(family)) if openvino_int8 else (None,)
    with staging(output) as staged:
        make = functools.partial(_variant, artifact, staged, output, runtime, precision)
        gate_set = (eval_images, gate_images) if validate else None
        return publish(_first_passing(recipes, build, make, artifact, staged, gate_set, progress), output)


def _check_source(artifact: ModelArtifact) -> None:
    if artifact.source is not None:
        # A variant's graph is already rewritten (contrib ops, casts, Q/DQ): fusing or converting it again fails
        # late, and its gate would compare it with another variant instead of with the exported model.
        raise ArtifactError(f"{artifact.path.name} is already an optimized variant; optimize the ONNX it came from")
    if artifact.format != "onnx" or artifact.precision != "fp32":
        raise ArtifactError(
            f"optimize starts from an fp32 ONNX artifact; {artifact.path.name} is "
            f"{artifact.format} {artifact.precision}"
        )


def _checked_output(
    artifact: ModelArtifact, output: str | Path | None, runtime: Runtime, precision: Precision, fusion: Fusion
) -> Path:
    """Where the variant goes: the asked path (with the variant's suffix, never the source) or the default."""
    output = Path(output) if output else default_output(artifact.path, runtime, precision, fusion)
    if output.resolve() == artifact.path.resolve():
        raise ExportError(f"output {output} would overwrite the source model")
    expected = get_variant(runtime, precision).suffix
    if output.suffix != expected:
        raise ExportError(f"the {runtime.value} output must end in {expected}: {output}")
    return output


def _first_passing(
    recipes: Sequence[Any],
    build: Callable[[Path, Any], dict[str, Any]],
    make: Callable[[dict[str, Any]], ModelArtifact],
    source: ModelArtifact,
    staged: Path,
    gate_set: tuple[ImageSet | None, str] | None,
    progress: Callable[[str], None],
) -> ModelArtifact:
    """The variant of the first recipe that passes its gate (without a gate, the first); the last recipe over budget
    raises its one ValidationError, and the staged files go."""
    rejected: list[dict[str, Any]] = []
    for i, recipe in enumerate(recipes):
        details = build(staged, recipe)
        if gate_set is not None:
            details["gate_images"] = gate_set[1]
        if rejected:
            details["rejected_recipes"] = rejected
        variant = make(details)
        if gate_set is None:
            return variant
        progress("accuracy gate")
        report = gate(variant, load_runner(source, spinning=False), gate_set[0])
        if report.passed or i == len(recipes) - 1:
            check_gate(report)
            return variant.with_(validation=report.to_dict())
        progress(f"recipe {recipe.name} over budget; trying {recipes[i + 1].name}")
        rejected.append({"recipe": recipe.name, "failures": report.failures})
    raise AssertionError("unreachable: no recipe")


def _variant(
    artifact: ModelArtifact, staged: Path, output: Path, runtime: Runtime, precision: Precision, details: dict
) -> ModelArtifact:
    """The variant written at `staged` (to become `output`), described as its source is."""
    return derived(
        artifact,
        path=staged,
        format=get_variant(runtime, precision).format,
        batch_size=artifact.batch_size,
        precision=precision.value,
        opset=details.pop("opset", None),
        fuse_attention=details.get("fuse_attention"),  # also kept in details, where older vitexports read it
        io_type=details.get("io_type", Precision.fp32),
        quant_method=details.get("quantization", {}).get("method"),
        source=artifact.sidecar.name if artifact.sidecar.parent == output.parent else str(artifact.sidecar),
        details=details,
    )


def _calibration_and_gate_images(
    artifact: ModelArtifact,
    calibration: str | Path | None,
    images: str | Path | None,
    needs_calibration: bool,
    validate: bool,
    calibration_limit: int,
    progress: Callable[[str], None],
) -> tuple[ImageSet | None, ImageSet | None, str]:
    """The calibration images, the gate's images, and where the gate's images came from.

    The gate never grades a variant on the images that set its quantization ranges: those agree best by
    construction. Without --images, every HOLD_OUT_EVERY-th calibration image is held out for the gate (and more are
    read, so the calibration keeps `calibration_limit`); a calibration folder too small to split leaves the gate its
    random inputs. A method that calibrates nothing (ORT dynamic INT8) gates on all the calibration images. A
    detector left without gate images is gated on scikit-image's photographs (gate.gate_photos): its
    random-weight outputs on noise say little, and the photographs are in the wheel, offline.
    """
    preprocess = artifact.preprocess
    calib = None
    if images is not None and validate:
        progress("loading images")
        gate_set = load_image_folder(images, preprocess)
        source = f"--images ({len(gate_set.images)})"
    else:
        gate_set, source = None, "random inputs only"
    if calibration is not None and (needs_calibration or (validate and gate_set is None)):
        progress("loading calibration images")
        split = validate and gate_set is None and needs_calibration
        limit = calibration_limit * HOLD_OUT_EVERY // (HOLD_OUT_EVERY - 1) if split else calibration_limit
        pool = load_image_folder(calibration, preprocess, limit=limit)
        if not needs_calibration:
            gate_set, source = pool, f"calibration folder, not used to calibrate ({len(pool.images)})"
        else:
            if split and len(pool.images) >= MIN_SPLIT:
                gate_set, pool = hold_out(pool, HOLD_OUT_EVERY)
                source = f"held out of the calibration folder ({len(gate_set.images)})"
            calib = pool
    if task_of(artifact).mask_input is not None and validate and gate_set is None:
        gate_set = gate_photos(preprocess)
        source = f"scikit-image photographs ({len(gate_set.images)})"
    return calib, gate_set, source


def _check_described(artifact: ModelArtifact) -> None:
    """The source graph is what its sidecar says (input, input size, outputs, their width): a sidecar edited by
    hand or by another tool is refused here in one line, not deep inside a rewrite or the gate."""
    import onnx

    from vitexport.export.onnx_import import graph_io

    try:
        model = onnx.load(str(artifact.path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"cannot read {artifact.path.name}: {first_line(e)}") from None
    if artifact.mask_name is not None:
        checked, says, found = _masked_io(artifact, model)
    else:
        checked = ("input", "input size", "output", "output width")
        says = (artifact.input_name, artifact.preprocess.input_size, artifact.output_names[0], artifact.num_classes)
        found = graph_io(model, artifact.path, artifact.output_names[0])
    for what, said, is_ in zip(checked, says, found, strict=True):
        if is_ is not None and said != is_:
            raise ArtifactError(
                f"{artifact.path.name} does not match its sidecar: {what} {is_}, the sidecar says {said}"
            )
    missing = set(artifact.output_names) - {o.name for o in model.graph.output}
    if missing:
        raise ArtifactError(f"{artifact.path.name} does not match its sidecar: no output {', '.join(sorted(missing))}")


def _masked_io(artifact: ModelArtifact, model: onnx.ModelProto) -> tuple[tuple, tuple, tuple]:
    """(what is checked, what the sidecar says, what the graph has) of a model with a mask input (a detector): its two
    inputs, its canvas and its class count (the first output's width, as the task sizes it)."""

    def dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
        return [d.dim_value or None for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    image = inputs.get(artifact.input_name, [None] * 4)
    logits = outputs.get(artifact.output_names[0], [None] * 3)
    says = (f"{artifact.input_name}, {artifact.mask_name}", artifact.preprocess.input_size, artifact.num_classes)
    extra = task_of(artifact).output_width(0)  # the width beyond the classes: a detector's no-object
    found = (", ".join(inputs), image[-1], logits[-1] - extra if logits[-1] else None)
    return ("inputs", "canvas", "classes"), says, found


def gate(candidate: ModelArtifact, reference: Run, images: ImageSet | None, precision: str | None = None) -> GateReport:
    """The accuracy gate of `candidate` against its fp32 reference (a runner of the fp32 ONNX or PyTorch model), by
    its task's budget for `precision` (default: the candidate's). The `validate` command calls this too. A model with
    a mask input (a detector) given no images is graded on scikit-image's photographs. ORT's spinning is off: two
    runtimes share the process."""
    task = task_of(candidate)
    if images is None and task.mask_input is not None:
        images = gate_photos(candidate.preprocess)
    return evaluate(
        load_runner(candidate, spinning=False),
        reference,
        task=task,
        precision=precision or candidate.precision,
        input_size=candidate.preprocess.input_size,
        output_names=candidate.output_names,
        images=images,
    )


def _check_combination(runtime: Runtime, precision: Precision, fusion: Fusion, io_type: IOType) -> None:
    if runtime is Runtime.tensorrt:
        raise ExportError("TensorRT engines are built by `vitexport trt` (on a GPU host), not by optimize")
    if runtime is Runtime.onnxruntime and precision is Precision.bf16:
        raise ExportError("ONNX Runtime's CPU provider has no BF16 kernels; use --runtime openvino for bf16")
    if runtime is Runtime.openvino and fusion is not Fusion.none:
        raise ExportError("OpenVINO reads standard ONNX and fuses attention itself: use --fuse-attention none")
    if precision is Precision.int8 and fusion is Fusion.onnx:
        # Measured: ORT's quantizer produced an invalid graph from the opset-23 Attention graph.
        raise ExportError("int8 cannot start from the opset-23 Attention graph; use --fuse-attention ort or none")
    if io_type is IOType.fp16 and precision is not Precision.fp16:
        raise ExportError("--io-type fp16 applies to --precision fp16 only")
