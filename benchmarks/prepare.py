"""The artifacts each backend runs, made by the pipeline's own stages (export, optimize, TensorRT) and cached in a
work folder between runs: a variant is reused only when its sidecar exists, i.e. when it passed its gate.

A variant that fails its accuracy gate is not one of our paths. It is still built without the gate (as
`<name>-ungated.<ext>`, its sidecar holding the gate's verdict) and measured, labelled "ungated", so that the report
shows what the gate costs; it never counts as our best gated path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vitexport.bench.runners import TORCH_PEERS, BenchBackend
from vitexport.errors import VitExportError, first_line
from vitexport.tasks import CLASSIFICATION, get_task
from vitexport.variants import get_variant

CALIBRATION_IMAGES = 32  # enough for min-max ranges of a speed benchmark; NNCF's default 300 costs minutes here
GATE_IMAGES = CLASSIFICATION.bench_gate_images  # real images every variant is gated on, none calibrated on
# A detector's: DETR-R50 takes seconds per 800 px image on 2 cores, and the gate runs the fp32 model and the variant.
DIGITS_MODEL = "test_vit_digits"  # trained on the digits: its calibration and gate images are digits


def _image_folders(workdir: Path, model: str, size: int, task: str) -> tuple[Path, Path]:
    """Calibration and gate images: the digits for the model trained on them, real photographs (crops of scikit-image's
    packaged photos, the gate's photos other than the calibration's) for every ImageNet and COCO model."""
    if model == DIGITS_MODEL:
        return _digits_folders(workdir, size)
    from vitexport.export.photos import GATE_PHOTOS, photo_folder

    return photo_folder(CALIBRATION_IMAGES), photo_folder(get_task(task).bench_gate_images, photos=GATE_PHOTOS)


def _digits_folders(workdir: Path, size: int) -> tuple[Path, Path]:
    """scikit-learn's digits, upsampled, for the model trained on them: an ImageFolder of the first
    CALIBRATION_IMAGES for INT8 calibration, and a flat folder of the next GATE_IMAGES for every variant's gate.
    The gate's folder is unlabelled, as the photographs are: the bench gates on agreement with the fp32 model on real
    images (on Gaussian noise alone a DeiT-B's top two logits tie); the labelled check is the optimize tests'."""
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
    backends: list[BenchBackend],
    workdir: Path,
    *,
    validate: bool = True,
    calibration: Path | None = None,
    source: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict[BenchBackend, Path], dict[BenchBackend, str], dict[BenchBackend, str]]:
    """Model files by backend; why the others cannot run (no GPU, ...) as one line each; and the backends whose
    model file is an ungated variant, with the gate's verdict. `source`: the fp32 ONNX artifact to start from (an
    imported file) instead of exporting the registered `model`; its variants are made beside it in the work folder."""
    from vitexport.export.onnx import export_onnx

    folder = workdir / (model if source is None else f"{model}-{_digest(source)}")
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[BenchBackend, Path] = {}
    skipped: dict[BenchBackend, str] = {}
    ungated: dict[BenchBackend, str] = {}
    needs_onnx = [b for b in backends if b not in TORCH_PEERS]
    if not needs_onnx:
        return paths, skipped, ungated
    plain = _cached(source) if source is not None else _cached(folder / f"{model}.onnx")
    if plain is None:
        progress(f"{model}: exporting to ONNX")
        plain = export_onnx(model, folder / f"{model}.onnx", validate=validate)
    for backend in needs_onnx:
        if backend in (BenchBackend.onnxruntime_plain, BenchBackend.openvino_plain):
            paths[backend] = plain.path
        elif backend.builds or backend.served:  # served rows serve the onnxruntime fp32 variant
            row = backend.variant or get_variant("onnxruntime", "fp32")
            runtime, precision = row.runtime, row.precision
            try:
                paths[backend], failure = _variant(plain, runtime, precision, folder, validate, calibration, progress)
            except VitExportError as e:
                skipped[backend] = f"{runtime.value} {precision.value} variant: {first_line(e)}"
                continue
            if failure:
                ungated[backend] = failure
        elif backend is BenchBackend.tensorrt:
            try:
                paths[backend] = _engine(plain, progress)
            except VitExportError as e:
                skipped[backend] = first_line(e)
    return paths, skipped, ungated


def _digest(source: Path) -> str:
    """A short name for an imported file's variants folder: two files both called model.onnx must not share one."""
    import hashlib

    return hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]


def _variant(
    plain, runtime, precision, folder: Path, validate: bool, calibration: Path | None, progress
) -> tuple[Path, str | None]:
    """The variant's file, and the gate's verdict when only an ungated variant could be made."""
    from vitexport.errors import ValidationError
    from vitexport.export.optimize import default_fusion, default_output

    # In the work folder, also for an imported file: the user's own folder gets no variants it did not ask for.
    output = folder / default_output(plain.path, runtime, precision, default_fusion(runtime, precision)).name
    fallback = output.with_name(output.stem + "-ungated" + output.suffix)
    for path in (output, fallback):
        cached = _cached(path)
        if cached is not None:
            return cached.path, cached.gate_failure
    name = f"{plain.model}: {runtime.value} {precision.value}"
    progress(f"{name}: optimizing (and the accuracy gate)" if validate else f"{name}: optimizing")
    default_calibration, gate_images = _image_folders(
        folder.parent, plain.model, plain.preprocess.input_size, plain.task
    )
    calib = (calibration or default_calibration) if precision.value == "int8" else None
    try:
        return _optimize(plain, runtime, precision, output, calib, gate_images, validate).path, None
    except ValidationError as e:
        failure = "failed its accuracy gate: " + first_line(e)
    progress(f"{name}: {failure}; building it ungated")
    variant = _optimize(plain, runtime, precision, fallback, calib, gate_images, False)
    variant.with_(gate_failure=failure).save()
    return variant.path, failure


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
    from vitexport.artifacts import Precision
    from vitexport.export.tensorrt import BatchProfile, BuildSettings, engine_for

    # No TensorRT or no GPU: the one-line reason, recorded as the skip.
    settings = BuildSettings(precision=Precision.fp16, profile=BatchProfile.parse("1:8:32"))
    return engine_for(str(plain.path), settings, reuse=_cached, progress=progress).path
