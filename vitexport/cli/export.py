"""The export commands: `onnx`, `optimize`, `validate` and `trt`. Each parses, calls its stage and renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitexport.artifacts import Precision
from vitexport.cli import render
from vitexport.cli.console import (
    JsonFlag,
    print_artifact_json,
    print_json,
    print_table,
    progress_status,
    user_errors,
)
from vitexport.errors import VitExportError
from vitexport.export.fp16 import IOType
from vitexport.export.fusion import Fusion
from vitexport.export.options import Attention, Heads, Runtime
from vitexport.export.quantize import QuantMethod

if TYPE_CHECKING:
    from vitexport.preprocess import PreprocessConfig

Checkpoint = Annotated[Path | None, typer.Option(help="timm, official release or Hugging Face weights.")]


def onnx(
    model: Annotated[str, typer.Argument(help="Registered model name or alias, e.g. deit_base.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="ONNX file [default: MODEL.onnx].")] = None,
    checkpoint: Checkpoint = None,
    pretrained: Annotated[bool, typer.Option(help="Download timm's weights (needs network).")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset [default: 18].")] = None,
    img_size: Annotated[
        int | None, typer.Option(help="Input size (detectors: the canvas); position embeddings are resampled.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Fix the batch size [default: dynamic].")] = None,
    heads: Annotated[
        Heads,
        typer.Option(
            "--heads",
            "--head",
            help="avg: logits (distilled DeiT: its heads' average); all: also logits_cls/_dist; features: the pooled "
            "embedding the classifier would see, output `embeddings` (transformers; encoders without a head load).",
        ),
    ] = Heads.avg,
    attention: Annotated[Attention, typer.Option(help="sdpa, or explicit MatMul-Softmax-MatMul.")] = Attention.sdpa,
    as_json: JsonFlag = False,
) -> None:
    """Export a model to ONNX (dynamic batch), check the graph and validate it on ONNX Runtime against PyTorch."""
    with user_errors():
        from vitexport.export.onnx import DEFAULT_OPSET, export_onnx

        if checkpoint is not None and pretrained:
            raise VitExportError("give --checkpoint or --pretrained, not both")
        with progress_status(not as_json) as progress:
            artifact = export_onnx(
                model,
                output or Path(f"{model}.onnx"),
                checkpoint=checkpoint,
                pretrained=pretrained,
                opset=opset or DEFAULT_OPSET,
                img_size=img_size,
                batch_size=batch_size,
                heads=heads,
                attention=attention.value,
                progress=progress,
            )
    if as_json:
        print_artifact_json(artifact)
        return
    render.drift_table("ONNX Runtime vs PyTorch", artifact.validation["reports"], cosine_digits=8)
    typer.echo(str(artifact.path))


def optimize(
    model: Annotated[str, typer.Argument(help="An fp32 ONNX artifact (or its sidecar), or a registered model name.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output .onnx, or .xml for openvino.")] = None,
    runtime: Annotated[Runtime, typer.Option(help="onnxruntime or openvino.")] = Runtime.onnxruntime,
    precision: Annotated[Precision, typer.Option(help="fp32, fp16, bf16 (openvino) or int8.")] = Precision.fp32,
    fuse_attention: Annotated[
        Fusion | None, typer.Option(help="ort, onnx (opset-23 Attention) or none (default: ort; onnx for fp16).")
    ] = None,
    calibration: Annotated[Path | None, typer.Option(help="Image folder for INT8 calibration.")] = None,
    images: Annotated[Path | None, typer.Option(help="Images for the gate; class subfolders add accuracy.")] = None,
    io_type: Annotated[IOType, typer.Option(help="fp16 graphs: fp32 or fp16 input and output.")] = IOType.fp32,
    quant_method: Annotated[
        QuantMethod | None, typer.Option(help="ORT int8: dynamic or static (default: by family).")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights, when MODEL is a registered name.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write an optimized variant (fused attention, FP16, BF16, INT8) that passes the accuracy gate; print op counts."""
    with user_errors():
        from vitexport.export.onnx import export_or_load
        from vitexport.export.optimize import optimize as optimize_stage

        with progress_status(not as_json) as progress:
            folder = output.parent if output else Path(".")
            source = export_or_load(model, folder, checkpoint=checkpoint, progress=progress)
            artifact = optimize_stage(
                source,
                runtime=runtime,
                precision=precision,
                fuse_attention=fuse_attention,
                calibration=calibration,
                images=images,
                output=output,
                io_type=io_type,
                quant_method=quant_method,
                progress=progress,
            )
    if as_json:
        print_artifact_json(artifact)
        return
    render.op_count_table(artifact.details["op_counts"])
    render.gate_table(artifact.validation)
    typer.echo(str(artifact.path))


def validate(
    candidate: Annotated[Path, typer.Argument(help="An ONNX or OpenVINO artifact written by vitexport.")],
    reference: Annotated[str, typer.Option(help="The fp32 ONNX artifact, or a registered model (with --checkpoint).")],
    images: Annotated[Path | None, typer.Option(help="Images; class subfolders add top-1/top-5 accuracy.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights of a registered --reference model.")] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="Budget to apply [default: the candidate's precision].")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Drift and accuracy of a variant against its fp32 reference; exit 1 if it is over its precision's budget."""
    with user_errors():
        from vitexport.artifacts import load_artifact
        from vitexport.errors import ValidationError
        from vitexport.export.gate import load_image_folder, reference_for
        from vitexport.export.optimize import gate

        cand = load_artifact(candidate)
        budget = precision or cand.precision
        reference_run = reference_for(cand, reference, checkpoint)
        image_set = load_image_folder(images, cand.preprocess) if images else None
        with progress_status(not as_json) as progress:
            progress("running the reference and the candidate")
            report = gate(cand, reference_run, image_set, precision=budget.value)
        if as_json:
            print_json(report.to_dict())
        else:
            render.gate_table(report.to_dict())
        if not report.passed:
            raise ValidationError(f"{budget} variant over budget: " + "; ".join(report.failures))


def trt(
    model_or_onnx: Annotated[str, typer.Argument(help="A registered model (exported first) or a vitexport ONNX file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Engine [MODEL_PRECISION.plan]")] = None,
    precision: Annotated[Precision, typer.Option(help="fp16, fp32 or int8 (int8 needs a Q/DQ ONNX).")] = (
        Precision.fp16
    ),
    batch: Annotated[str, typer.Option(help="Optimization profile of the batch axis, MIN:OPT:MAX.")] = "1:8:32",
    img_size: Annotated[int | None, typer.Option(help="Input size when exporting a model name.")] = None,
    workspace: Annotated[float, typer.Option(help="Builder workspace memory in GiB.")] = 4.0,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache [default: timing.cache by engine]")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimization level 0-5.")] = 3,
    fp32_softmax: Annotated[bool, typer.Option(help="TensorRT 10 FP16: also pin Softmax to FP32.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build a TensorRT engine on a GPU host: layer info, fusion audit, validation against ONNX Runtime fp32."""
    with user_errors():
        from vitexport.export.tensorrt import BatchProfile, BuildSettings, engine_for

        settings = BuildSettings(
            precision=precision,
            profile=BatchProfile.parse(batch),
            workspace_gib=workspace,
            opt_level=opt_level,
            timing_cache=timing_cache,
            fp32_softmax=fp32_softmax,
        )
        with progress_status(not as_json) as progress:
            artifact = engine_for(model_or_onnx, settings, output=output, img_size=img_size, progress=progress)
    render.engine_warnings(artifact)
    if as_json:
        print_artifact_json(artifact)
        return
    render.engine_report(artifact)
    typer.echo(str(artifact.path))


# What `import` takes: a graph, or the folder around it.
ImportSource = Annotated[
    Path,
    typer.Argument(
        metavar="FILE.onnx|DIR",
        help="An ONNX image model vitexport did not write, or the folder Optimum's export wrote (model.onnx, "
        "config.json, preprocessor_config.json).",
    ),
]
# The image processor's backend: what transformers 5's AutoImageProcessor(backend=) takes.
HfBackendOption = Annotated[
    str | None,
    typer.Option(
        help="pil or torchvision: the image processor's backend, as transformers 5's AutoImageProcessor(backend=) "
        "[default: what the transformers named in config.json loads: 5 torchvision, 4 by the type's name]."
    ),
]


def import_(
    onnx_file: ImportSource,
    name: Annotated[
        str | None,
        typer.Option(help="The model's name in later stages [default: the file's stem; model.onnx: its folder's]."),
    ] = None,
    preprocess_config: Annotated[
        Path | None, typer.Option(help="A Hugging Face preprocessor_config.json [default: the one beside the ONNX].")
    ] = None,
    mean: Annotated[str | None, typer.Option(help="Normalisation mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, e.g. 0.229,0.224,0.225.")] = None,
    size: Annotated[int | None, typer.Option(help="Input side in pixels [default: the graph's].")] = None,
    crop_pct: Annotated[float | None, typer.Option(help="Center-crop fraction [default: 0.875].")] = None,
    interpolation: Annotated[
        str | None, typer.Option(help="nearest, bilinear, bicubic, lanczos, box or hamming [default: bicubic].")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Class names, one per line, in output order [default: config.json's id2label].")
    ] = None,
    output: Annotated[str | None, typer.Option(help="The output to use when there are several.")] = None,
    embeddings: Annotated[bool, typer.Option(help="The output is an embedding (N x D), not class logits.")] = False,
    hf_backend: HfBackendOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Make an ONNX image classifier (or embedding model) from elsewhere an artifact: check it, record its
    preprocessing, labels and tensor names in a sidecar; then optimize, validate, repo and bench take it. Optimum's
    folder imports with no flags: preprocessing, labels and head come from the Hugging Face files beside the graph."""
    with user_errors():
        from vitexport.export.onnx_import import PreprocessFlags, import_onnx, parse_floats

        flags = PreprocessFlags(parse_floats("--mean", mean), parse_floats("--std", std), size, crop_pct, interpolation)
        artifact = import_onnx(
            onnx_file,
            name=name,
            flags=flags,
            preprocess_config=preprocess_config,
            labels=labels,
            output=output,
            embeddings=embeddings,
            hf_backend=hf_backend,
        )
    if as_json:
        print_artifact_json(artifact)
        return
    p = artifact.preprocess
    rows = [
        ["input", f"{artifact.input_name}: {artifact.batch_size or 'N'} x 3 x {p.input_size} x {p.input_size}"],
        ["output", f"{artifact.output_names[0]}: {artifact.task}, {artifact.num_classes} values"],
        ["preprocess", _preprocessing(artifact.preprocess)],
        ["family", f"{artifact.family} (INT8 recipes follow it)"],
        ["labels", f"{len(artifact.labels)} names" if artifact.labels else "none (class indices)"],
    ]
    print_table(f"imported {artifact.model}", ["", ""], rows)
    typer.echo(str(artifact.sidecar))


def _preprocessing(p: PreprocessConfig) -> str:
    """The resize, crop and normalisation an imported model's preprocessing does, in one line."""
    if isinstance(p.resize, tuple):
        resize = f"resize to {p.resize[0]} x {p.resize[1]}"
    else:
        resize = f"short side to {p.resize_short}"
    crop = f", crop {p.input_size}" if p.crop else ""
    order = ", BGR" if p.channel_order == "BGR" else ""
    kernel = f"{p.interpolation}, {p.resize_backend}" if p.resize_backend != "pil" else p.interpolation
    return f"{resize}{crop} ({kernel}), mean {list(p.mean)}, std {list(p.std)}{order}"
