"""The artifacts each backend runs, made by the pipeline's own stages (export, optimize, TensorRT) and cached in a
work folder between runs: a variant is reused only when its sidecar exists, i.e. when it passed its gate.

A variant that fails its accuracy gate is not one of our paths. It is still built without the gate (as
`<name>-ungated.<ext>`, its sidecar holding the gate's verdict) and measured, labelled "ungated", so that the report
shows what the gate costs; it never counts as our best gated path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vitexport.bench.runners import Backend

from vitexport.errors import VitExportError

CALIBRATION_IMAGES = 32  # enough for min-max ranges of a speed benchmark; NNCF's default 300 costs minutes here
GATE_IMAGES = 64  # real images every variant is gated on, none of them a calibration image


def _digits_folders(workdir: Path, size: int) -> tuple[Path, Path]:
    """Real images (scikit-learn's digits, upsampled) where ImageNet cannot be downloaded: an ImageFolder of the first
    CALIBRATION_IMAGES for INT8 calibration, and a flat folder of the next GATE_IMAGES for every variant's gate.
    The gate's folder is unlabelled on purpose: a random-weight model's accuracy on digit labels means nothing, its
    agreement with the fp32 model on real images does (on Gaussian noise alone a DeiT-B's top two logits tie)."""
    from PIL import Image
    from vitexport.bench.digits import load_digits_images, write_image_folder

    calibration, gate = workdir / f"calibration_{size}", workdir / f"gate_{size}"
    if not (calibration.is_dir() and gate.is_dir()):
        images, labels = load_digits_images(size)
        write_image_folder(calibration, images[:CALIBRATION_IMAGES], labels[:CALIBRATION_IMAGES])
        gate.mkdir(exist_ok=True)
        for i in range(CALIBRATION_IMAGES, CALIBRATION_IMAGES + GATE_IMAGES):
            Image.fromarray(images[i]).save(gate / f"digit_{i:04d}.png")
    return calibration, gate


def _cached(path: Path):
    from vitexport.artifacts import load_artifact, sidecar_path

    return load_artifact(path) if sidecar_path(path).is_file() and path.exists() else None


def prepare(
    model: str,
    backends: list[Backend],
    workdir: Path,
    *,
    validate: bool = True,
    calibration: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict[Backend, Path], dict[Backend, str], dict[Backend, str]]:
    """Model files by backend; why the others cannot run (no GPU, ...) as one line each; and the backends whose
    model file is an ungated variant, with the gate's verdict."""
    from vitexport.export.onnx import export_onnx
    from vitexport.export.optimize import Precision, Runtime

    from vitexport.models import get_spec

    spec = get_spec(model)
    folder = workdir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[Backend, Path] = {}
    skipped: dict[Backend, str] = {}
    ungated: dict[Backend, str] = {}
    needs_onnx = [b for b in backends if b not in (Backend.torch, Backend.torch_compile, Backend.timm)]
    if not needs_onnx:
        return paths, skipped, ungated
    plain = _cached(folder / f"{spec.name}.onnx")
    if plain is None:
        progress(f"{spec.name}: exporting to ONNX")
        plain = export_onnx(spec.name, folder / f"{spec.name}.onnx", validate=validate)
    variants = {
        Backend.onnxruntime: (Runtime.onnxruntime, Precision.fp32),
        Backend.onnxruntime_int8: (Runtime.onnxruntime, Precision.int8),
        Backend.openvino_bf16: (Runtime.openvino, Precision.bf16),
        Backend.openvino_int8: (Runtime.openvino, Precision.int8),
    }
    for backend in needs_onnx:
        if backend in (Backend.onnxruntime_plain, Backend.openvino_plain):
            paths[backend] = plain.path
        elif backend in variants or backend.served:
            runtime, precision = variants.get(backend, (Runtime.onnxruntime, Precision.fp32))
            try:
                paths[backend], failure = _variant(plain, runtime, precision, folder, validate, calibration, progress)
            except VitExportError as e:
                skipped[backend] = f"{runtime.value} {precision.value} variant: {str(e).splitlines()[0]}"
                continue
            if failure:
                ungated[backend] = failure
        elif backend is Backend.tensorrt:
            try:
                paths[backend] = _engine(plain, progress)
            except VitExportError as e:
                skipped[backend] = str(e).splitlines()[0]
    return paths, skipped, ungated


def _variant(
    plain, runtime, precision, folder: Path, validate: bool, calibration: Path | None, progress
) -> tuple[Path, str | None]:
    """The variant's file, and the gate's verdict when only an ungated variant could be made."""
    from vitexport.export.optimize import default_fusion, default_output

    from vitexport.errors import ValidationError

    output = default_output(plain.path, runtime, precision, default_fusion(runtime, precision))
    fallback = output.with_name(output.stem + "-ungated" + output.suffix)
    for path in (output, fallback):
        cached = _cached(path)
        if cached is not None:
            return cached.path, cached.details.get("gate_failure")
    name = f"{plain.model}: {runtime.value} {precision.value}"
    progress(f"{name}: optimizing (and the accuracy gate)" if validate else f"{name}: optimizing")
    default_calibration, gate_images = _digits_folders(folder.parent, plain.preprocess.input_size)
    calib = (calibration or default_calibration) if precision.value == "int8" else None
    # ORT's quantizer logs a pre-processing hint on the root logger at every call: not for the bench's output.
    logging.disable(logging.WARNING)
    try:
        try:
            return _optimize(plain, runtime, precision, output, calib, gate_images, validate).path, None
        except ValidationError as e:
            failure = "failed its accuracy gate: " + str(e).splitlines()[0]
        progress(f"{name}: {failure}; building it ungated")
        variant = _optimize(plain, runtime, precision, fallback, calib, gate_images, False)
        variant.with_(details=variant.details | {"gate_failure": failure}).save()
        return variant.path, failure
    finally:
        logging.disable(logging.NOTSET)


def _optimize(plain, runtime, precision, output: Path, calib: Path | None, images: Path, validate: bool):
    from vitexport.export.fusion import Fusion
    from vitexport.export.optimize import default_fusion, optimize

    return optimize(
        plain,
        runtime=runtime,
        precision=precision,
        fuse_attention=default_fusion(runtime, precision) if runtime.value == "onnxruntime" else Fusion.none,
        calibration=calib,
        calibration_limit=CALIBRATION_IMAGES,
        images=images,
        validate=validate,
        output=output,
    )


def _engine(plain, progress) -> Path:
    from vitexport.export.tensorrt import (
        BatchProfile,
        BuildSettings,
        Precision,
        build_engine,
        default_engine_path,
        onnx_for_engine,
        tensorrt_environment,
    )

    env = tensorrt_environment()  # no TensorRT or no GPU: the one-line reason, recorded as the skip
    settings = BuildSettings(precision=Precision.fp16, profile=BatchProfile.parse("1:8:32"))
    source = onnx_for_engine(str(plain.path), settings, env.tensorrt_version, progress=progress)
    output = default_engine_path(source, settings.precision)
    cached = _cached(output)
    if cached is not None:
        return cached.path
    return build_engine(source, output, settings, environment=env, progress=progress).path
