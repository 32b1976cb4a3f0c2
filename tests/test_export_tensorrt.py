"""The TensorRT stage. On CPU: everything before CUDA (profile, build choice per precision and TensorRT version, the
trtexec line, the sidecar, the fusion audit on saved layer information, the error path). On GPU hosts (`-m gpu`):
real engines from the tiny `test_vit`, compared with ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vitexport.artifacts import ModelArtifact, load_artifact
from vitexport.cli import app
from vitexport.errors import UnknownModelError
from vitexport.export.tensorrt import (
    BatchProfile,
    BuildPlan,
    BuildSettings,
    EngineBuildError,
    EngineDetails,
    EnginePaths,
    GraphPrecisionError,
    Precision,
    TensorRTUnavailable,
    audit_layer_info,
    check_profile_fits,
    choose_build,
    default_engine_path,
    engine_artifact,
    expected_attention_blocks,
    fp32_reference,
    onnx_for_engine,
    plan_build,
    tensor_precision,
    tensorrt_environment,
    trtexec_command,
    trtexec_script,
    validation_tolerance,
)
from vitexport.models import get_spec

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def _environment():
    try:
        return tensorrt_environment()
    except TensorRTUnavailable:
        return None


ENV = _environment()
needs_gpu = pytest.mark.skipif(ENV is None, reason="needs TensorRT and an NVIDIA GPU")
without_gpu = pytest.mark.skipif(ENV is not None, reason="TensorRT and a GPU are present: no error path to test")


def onnx_artifact(tmp_path: Path, name: str = "test_vit.onnx", precision: str = "fp32", **kw) -> ModelArtifact:
    """An ONNX artifact whose sidecar is real; the file's bytes don't matter before CUDA."""
    path = tmp_path / name
    path.write_bytes(b"onnx")
    spec = get_spec("test_vit")
    artifact = ModelArtifact(
        path=path,
        format="onnx",
        model=spec.name,
        preprocess=spec.preprocess,
        num_classes=spec.num_classes,
        precision=precision,
        opset=18,
        **kw,
    )
    artifact.save()
    return artifact


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vitexport.export.onnx import export_onnx

    return export_onnx("test_vit", tmp_path_factory.mktemp("onnx") / "test_vit.onnx")


# --- profile and settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1:8:32", (1, 8, 32)), (" 2:2:2 ", (2, 2, 2)), ("16", (16, 16, 16)), ("1:1:4096", (1, 1, 4096))],
)
def test_profile_parses(text, expected):
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == expected
    assert BatchProfile.parse(str(p)) == p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8:4:16", "MIN <= OPT <= MAX"),
        ("0:1:8", "1 <= MIN"),
        ("1:8:4097", "exceeds the ONNX batch axis limit 4096"),
        ("1:8", "MIN:OPT:MAX"),
        ("1:8:32:64", "MIN:OPT:MAX"),
        ("a:b:c", "integers"),
        ("", "integers"),
    ],
)
def test_profile_rejects(text, message):
    with pytest.raises(EngineBuildError, match=message):
        BatchProfile.parse(text)


def test_profile_shapes_and_validation_batches():
    p = BatchProfile(1, 8, 32)
    assert p.shapes(224) == {"min": (1, 3, 224, 224), "opt": (8, 3, 224, 224), "max": (32, 3, 224, 224)}
    assert p.validation_batches() == (1, 8)  # 32 is too large for the CPU reference
    assert BatchProfile(16, 32, 64).validation_batches() == (16,)  # never empty
    assert p.to_dict() == {"min": 1, "opt": 8, "max": 32}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workspace_gib": 0}, "--workspace"), ({"workspace_gib": 2048}, "--workspace"), ({"opt_level": 6}, "0-5")],
)
def test_settings_limits(kwargs, message):
    with pytest.raises(EngineBuildError, match=message):
        BuildSettings(**kwargs)


def test_settings_units():
    s = BuildSettings(workspace_gib=1.5)
    assert s.workspace_bytes == 1536 * 2**20 and s.workspace_mib == 1536


def test_fixed_batch_onnx_needs_a_fixed_profile(tmp_path):
    artifact = onnx_artifact(tmp_path, batch_size=4)
    with pytest.raises(EngineBuildError, match="use --batch 4"):
        check_profile_fits(artifact, BatchProfile(1, 4, 8))
    check_profile_fits(artifact, BatchProfile(4, 4, 4))
    check_profile_fits(onnx_artifact(tmp_path, "dyn.onnx"), BatchProfile(1, 4, 8))


# --- which graph and which flags, per precision and TensorRT version --------------------------------------------

FP16_WEAK = ("FP16", "OBEY_PRECISION_CONSTRAINTS")


@pytest.mark.parametrize(
    ("graph", "precision", "version", "strong", "flags"),
    [
        ("fp32", "fp32", "10.13.3.9", False, ()),
        ("fp32", "fp32", "11.4.0", True, ()),
        ("fp32", "fp16", "10.13.3.9", False, FP16_WEAK),
        ("fp16", "fp16", "10.13.3.9", True, ()),
        ("fp16", "fp16", "11.4.0", True, ()),
        ("int8", "int8", "10.13.3.9", False, ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")),
        ("int8", "int8", "11.4.0", True, ()),
        ("fp16", "fp16", "12.0.0", True, ()),  # a future major is built the strongly typed way
    ],
)
def test_build_choice(graph, precision, version, strong, flags):
    mode = choose_build(graph, Precision(precision), version)
    assert mode.strongly_typed is strong
    assert mode.builder_flags == flags
    # Only weakly typed reduced-precision builds pin layers; LayerNorm always, Softmax on request.
    assert mode.fp32_layer_types == (("NORMALIZATION",) if flags else ())
    if flags:
        assert choose_build(graph, Precision(precision), version, fp32_softmax=True).fp32_layer_types == (
            "NORMALIZATION",
            "SOFTMAX",
        )


@pytest.mark.parametrize(
    ("graph", "precision", "version", "needed", "message"),
    [
        ("fp32", "fp16", "11.4.0", "fp16", "strongly typed, so an fp16 engine needs the FP16 ONNX"),
        ("fp32", "int8", "10.13.3.9", "int8", "explicit Q/DQ ONNX"),
        ("fp16", "int8", "11.4.0", "int8", "explicit Q/DQ ONNX"),
        ("fp16", "fp32", "10.13.3.9", "fp32", "fp32 engine builds from the fp32 ONNX"),
        ("int8", "fp16", "10.13.3.9", "fp16", "cannot be built from an int8 graph"),
    ],
)
def test_build_choice_needs_another_graph(graph, precision, version, needed, message):
    with pytest.raises(GraphPrecisionError, match=message) as e:
        choose_build(graph, Precision(precision), version)
    assert e.value.needed is Precision(needed)


def test_old_tensorrt_is_refused():
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 8\.6\.1 is too old"):
        choose_build("fp32", Precision.fp32, "8.6.1")


def test_plan_names_the_file_and_the_command(tmp_path):
    artifact = onnx_artifact(tmp_path)
    with pytest.raises(
        GraphPrecisionError, match=r"test_vit\.onnx: .*; make it with `vitexport optimize test_vit\.onnx "
    ):
        plan_build(artifact, Precision.fp16, "11.4.0")
    plan = plan_build(onnx_artifact(tmp_path, "fp16.onnx", precision="fp16"), Precision.fp16, "11.4.0")
    assert plan.onnx.name == "fp16.onnx" and plan.strongly_typed and plan.major == 11


def test_plan_refuses_graphs_the_parser_cannot_read(tmp_path):
    contrib = onnx_artifact(tmp_path, "ort.onnx", fuse_attention="ort")
    with pytest.raises(EngineBuildError, match="contrib ops"):
        plan_build(contrib, Precision.fp32, "11.4.0")
    dynamic = onnx_artifact(
        tmp_path,
        "dyn.onnx",
        precision="int8",
        fuse_attention="none",
        quant_method="dynamic",
    )
    with pytest.raises(GraphPrecisionError, match=r"dynamically quantized, not explicit Q/DQ.*--quant-method static"):
        plan_build(dynamic, Precision.int8, "11.4.0")
    static = onnx_artifact(tmp_path, "qdq.onnx", precision="int8", quant_method="static")
    assert plan_build(static, Precision.int8, "11.4.0").strongly_typed
    # The standard ONNX Attention op (optimize's fp16 default) is parsed from TensorRT 10.14 on.
    attention = onnx_artifact(tmp_path, "att.onnx", precision="fp16", fuse_attention="onnx")
    with pytest.raises(EngineBuildError, match="--precision fp16 --fuse-attention none"):
        plan_build(attention, Precision.fp16, "10.13.3.9")
    assert plan_build(attention, Precision.fp16, "10.14.1.48").strongly_typed


def test_plan_refuses_a_non_onnx_artifact(tmp_path):
    engine = onnx_artifact(tmp_path).with_(format="tensorrt")
    with pytest.raises(EngineBuildError, match="TensorRT builds from ONNX"):
        plan_build(engine, Precision.fp32, "10.13.3.9")


# --- trtexec ---------------------------------------------------------------------------------------------------


def _trtexec(tmp_path, mode_args, fp32_layers=()):
    plan = BuildPlan(tmp_path / "onnx" / "deit.onnx", *mode_args)
    settings = BuildSettings(profile=BatchProfile(1, 8, 32), workspace_gib=2, opt_level=4)
    return trtexec_command(
        plan,
        settings,
        engine=tmp_path / "engines" / "deit_fp16.plan",
        input_name="pixel_values",
        img_size=224,
        timing_cache=tmp_path / "engines" / "timing.cache",
        fp32_layers=fp32_layers,
    )


def test_trtexec_tensorrt10_fp16_weakly_typed(tmp_path):
    layers = ["/blocks.0/norm1/LayerNormalization", "/norm/LayerNormalization"]
    args = _trtexec(tmp_path, (Precision.fp16, "10.13.3.9", False, FP16_WEAK, ("NORMALIZATION",)), layers)
    assert args[0] == "trtexec"
    assert "--onnx=../onnx/deit.onnx" in args  # relative to the engine's folder, where the script cds
    assert "--saveEngine=deit_fp16.plan" in args
    assert "--minShapes=pixel_values:1x3x224x224" in args
    assert "--optShapes=pixel_values:8x3x224x224" in args
    assert "--maxShapes=pixel_values:32x3x224x224" in args
    assert "--memPoolSize=workspace:2048" in args
    assert "--builderOptimizationLevel=4" in args
    assert "--timingCacheFile=timing.cache" in args
    assert "--profilingVerbosity=detailed" in args and "--exportLayerInfo=deit_fp16.plan.trtexec.layers.json" in args
    assert "--fp16" in args and "--precisionConstraints=obey" in args
    assert "--layerPrecisions=/blocks.0/norm1/LayerNormalization:fp32,/norm/LayerNormalization:fp32" in args
    assert "--layerOutputTypes=/blocks.0/norm1/LayerNormalization:fp32,/norm/LayerNormalization:fp32" in args
    assert "--stronglyTyped" not in args


def test_trtexec_replay_keeps_the_audited_layer_info(tmp_path):
    # trtexec --skipInference exports layer information without an execution context: on a dynamic profile its
    # formats read "N/A due to dynamic shapes". It must write beside, not over, the file vitexport audited.
    args = _trtexec(tmp_path, (Precision.fp16, "10.13.3.9", False, FP16_WEAK, ("NORMALIZATION",)))
    paths = EnginePaths(tmp_path / "engines" / "deit_fp16.plan")
    exported = [a.split("=", 1)[1] for a in args if a.startswith("--exportLayerInfo=")]
    assert "--skipInference" in args
    assert exported == [paths.trtexec_layer_info.name] and paths.trtexec_layer_info != paths.layer_info
    written = {a.split("=", 1)[1] for a in args if "=" in a and not a.startswith("--onnx=")}
    assert paths.layer_info.name not in written and paths.sidecar.name not in written


def test_trtexec_tensorrt10_strongly_typed(tmp_path):
    args = _trtexec(tmp_path, (Precision.fp16, "10.13.3.9", True))
    assert "--stronglyTyped" in args
    assert not {"--fp16", "--int8", "--precisionConstraints=obey"} & set(args)
    assert not any(a.startswith("--layerPrecisions") for a in args)


def test_trtexec_tensorrt11_has_no_precision_flags(tmp_path):
    # TensorRT 11 removed --fp16/--int8/--best; --stronglyTyped is always on there.
    args = _trtexec(tmp_path, (Precision.fp16, "11.4.0", True))
    assert not {"--fp16", "--int8", "--best", "--stronglyTyped", "--precisionConstraints=obey"} & set(args)


def test_trtexec_script_runs_trtexec_with_these_arguments(tmp_path):
    layers = ["node with space", "/a/b;rm -rf x", "it's"]
    args = _trtexec(tmp_path, (Precision.fp16, "10.13.3.9", False, FP16_WEAK, ("NORMALIZATION",)), layers)
    script = trtexec_script(args, tensorrt_version="10.13.3.9")
    assert script.startswith("#!/bin/sh\n") and "TensorRT 10.13.3.9" in script
    # Run it with a stand-in `trtexec` that prints its arguments one per line: the shell must hand over exactly
    # the arguments built here, from the engine's folder, whatever the layer names hold.
    engines, bin_dir = tmp_path / "engines", tmp_path / "bin"
    engines.mkdir()
    bin_dir.mkdir()
    fake = bin_dir / "trtexec"
    fake.write_text('#!/bin/sh\npwd\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    script_path = engines / "deit_fp16.plan.trtexec.sh"
    script_path.write_text(script)
    script_path.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(script_path)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    cwd, *printed = result.stdout.splitlines()
    assert Path(cwd).resolve() == engines.resolve()
    assert printed == args[1:]


# --- the sidecar -------------------------------------------------------------------------------------------------


def _details(profile: BatchProfile | None = None) -> EngineDetails:
    return EngineDetails(
        profile=profile or BatchProfile(1, 8, 32),
        precision=Precision.fp16,
        tensorrt_version="10.13.3.9",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        strongly_typed=False,
        builder_flags=FP16_WEAK,
        builder_optimization_level=3,
        workspace_gib=4.0,
        onnx="../onnx/test_vit.onnx.json",
        layer_info="test_vit_fp16.plan.layers.json",
        trtexec="test_vit_fp16.plan.trtexec.sh",
        timing_cache="timing.cache",
        fp32_layers=("/norm/LayerNormalization",),
        fusion_audit={"passed": True, "warnings": []},
        build_seconds=12.5,
    )


def test_sidecar_round_trip(tmp_path):
    (tmp_path / "onnx").mkdir()
    source = onnx_artifact(tmp_path / "onnx")
    paths = EnginePaths(tmp_path / "engines" / "test_vit_fp16.plan")
    paths.engine.parent.mkdir()
    paths.engine.write_bytes(b"plan")
    artifact = engine_artifact(source, paths, _details())
    assert artifact.save() == paths.sidecar == tmp_path / "engines" / "test_vit_fp16.plan.json"

    raw = json.loads(paths.sidecar.read_text())
    assert raw["format"] == "tensorrt" and raw["precision"] == "fp16" and raw["path"] == "test_vit_fp16.plan"
    assert raw["batch_size"] is None  # dynamic: the profile says which batches
    # What the Triton writer reads:
    assert raw["details"]["profile"] == {"min": 1, "opt": 8, "max": 32}
    assert raw["details"]["compute_capability"] == "8.9" and raw["details"]["gpu_name"] == "NVIDIA L4"
    assert raw["details"]["tensorrt_version"] == "10.13.3.9" and raw["details"]["precision"] == "fp16"

    loaded = load_artifact(paths.engine)
    assert loaded == artifact
    assert EngineDetails.from_artifact(loaded) == _details()
    back = load_artifact(paths.engine.parent / loaded.source)  # `source` leads back to the ONNX
    assert back.path.resolve() == source.path.resolve() and back.with_(path=source.path) == source
    assert loaded.preprocess == source.preprocess and loaded.input_name == "pixel_values"


def test_sidecar_of_a_fixed_profile_has_a_batch_size(tmp_path):
    source = onnx_artifact(tmp_path)
    artifact = engine_artifact(source, EnginePaths(tmp_path / "e.plan"), _details(BatchProfile(8, 8, 8)))
    assert artifact.batch_size == 8


def test_engine_details_refuse_other_artifacts(tmp_path):
    with pytest.raises(EngineBuildError, match="not a TensorRT engine"):
        EngineDetails.from_artifact(onnx_artifact(tmp_path))


def test_paths_beside_the_engine(tmp_path):
    paths = EnginePaths(tmp_path / "m.plan")
    assert [p.name for p in (paths.sidecar, paths.layer_info, paths.trtexec, paths.trtexec_layer_info)] == [
        "m.plan.json",
        "m.plan.layers.json",
        "m.plan.trtexec.sh",
        "m.plan.trtexec.layers.json",
    ]
    assert default_engine_path(onnx_artifact(tmp_path), Precision.int8) == tmp_path / "test_vit_int8.plan"


def test_fp32_reference_walks_the_source_chain(tmp_path):
    fp32 = onnx_artifact(tmp_path)
    fp16 = onnx_artifact(tmp_path, "test_vit_fp16.onnx", precision="fp16", source=fp32.sidecar.name)
    assert fp32_reference(fp16) == fp32
    assert fp32_reference(fp32) == fp32
    orphan = onnx_artifact(tmp_path, "orphan.onnx", precision="int8")
    with pytest.raises(EngineBuildError, match="no fp32 ONNX to validate against"):
        fp32_reference(orphan)


def test_validation_rules_per_precision():
    from vitexport.export.tensorrt import QDQ_ENGINE_TOLERANCE, VALIDATION_RULES

    assert set(VALIDATION_RULES) == set(Precision) - {Precision.bf16}  # TensorRT builds no BF16 here
    assert VALIDATION_RULES[Precision.fp16].reference == VALIDATION_RULES[Precision.fp32].reference == "fp32"
    # int8: gated against the Q/DQ graph it was built from; fp32 drift is reported only, as the accuracy gate does.
    assert VALIDATION_RULES[Precision.int8].reference == "source"
    assert validation_tolerance(Precision.int8) == QDQ_ENGINE_TOLERANCE


@pytest.fixture(scope="module")
def qdq(exported, tmp_path_factory):
    """A calibrated static Q/DQ graph of test_vit, as `vitexport optimize --quant-method static` makes it. Calibrated
    on low-contrast images, so that Gaussian inputs are clipped as real INT8 engines clip them."""
    from vitexport.export.quantize import QuantMethod, quantize_onnx

    path = tmp_path_factory.mktemp("qdq") / "test_vit_int8.onnx"
    calibration = np.random.default_rng(1).uniform(-0.05, 0.05, (8, 3, 64, 64)).astype(np.float32)
    quantize_onnx(
        exported.path, path, method=QuantMethod.static, input_name=exported.input_name, calibration=calibration
    )
    artifact = exported.with_(
        path=path,
        precision="int8",
        source=os.path.relpath(exported.sidecar, path.parent),
        quant_method="static",
        details={"quantization": {"method": "static", "calibration_images": 8}},
        validation=None,
    )
    artifact.save()
    return artifact


def _ort_runner(artifact: ModelArtifact):
    """ONNX Runtime running `artifact` where the TensorRT engine would run (no GPU here)."""
    from vitexport.ort import ort_session

    session = ort_session(artifact.path)
    return lambda x: dict(zip(artifact.output_names, session.run(None, {artifact.input_name: x}), strict=True))


def test_int8_engine_is_gated_against_its_qdq_graph(qdq, exported):
    from vitexport.errors import ValidationError
    from vitexport.export.tensorrt import compare_with_onnx, validation_references
    from vitexport.export.validate import TOLERANCES

    settings = BuildSettings(precision=Precision.int8, profile=BatchProfile(1, 4, 8))
    references = validation_references(qdq, Precision.int8)
    assert references.gate == qdq and references.fp32.path.resolve() == exported.path.resolve()
    # An engine that computes what the Q/DQ graph computes passes, although it is far from fp32 on Gaussian inputs:
    # gating it against fp32 with the int8 budget, as before, failed every calibrated INT8 engine.
    validation = compare_with_onnx(_ort_runner(qdq), qdq, references, settings)
    assert validation["passed"] and validation["reference"] == "test_vit_int8.onnx"
    assert {r["batch_size"] for r in validation["reports"]} == {1, 4, 8}
    assert all(r["cosine"] > 0.9999 for r in validation["reports"])
    assert validation["fp32_reference"] == exported.path.name and len(validation["fp32_drift"]) == 3
    assert min(r["cosine"] for r in validation["fp32_drift"]) < TOLERANCES["int8"].min_cosine  # reported, not gated
    # An engine that does not compute the Q/DQ graph (here: the fp32 graph) fails, naming the graph.
    with pytest.raises(
        ValidationError, match=r"int8 engine differs from test_vit_int8\.onnx on ONNX Runtime: .*cosine"
    ):
        compare_with_onnx(_ort_runner(exported), qdq, references, settings)


def test_fp16_engine_is_gated_against_fp32(exported):
    from vitexport.export.tensorrt import compare_with_onnx, validation_references

    settings = BuildSettings(precision=Precision.fp16, profile=BatchProfile(1, 1, 2))
    references = validation_references(exported, Precision.fp16)
    assert references.gate == exported and references.fp32 is None
    validation = compare_with_onnx(_ort_runner(exported), exported, references, settings)
    assert validation["reference"] == "test_vit.onnx" and "fp32_drift" not in validation


def test_cli_shows_what_gated_the_engine_and_build_warnings(monkeypatch, tmp_path):
    import vitexport.export.tensorrt as tensorrt

    report = {"output": "logits", "batch_size": 1, "max_abs": 0.1, "cosine": 0.9999, "top1_agreement": 1.0}
    audit = audit_layer_info(_layers("trt10_vit_fp16_fused.layers.json"), expected_attention=2, precision="int8")
    details = replace(
        _details(),
        precision=Precision.int8,
        fusion_audit=audit.to_dict(),
        build_warnings=("timing cache t was not usable (x)",),
    )
    engine = engine_artifact(onnx_artifact(tmp_path), EnginePaths(tmp_path / "e.plan"), details).with_(
        validation={
            "passed": True,
            "reference": "test_vit_int8.onnx",
            "reports": [report],
            "fp32_reference": "test_vit.onnx",
            "fp32_drift": [report | {"cosine": 0.41}],
        }
    )
    env = tensorrt.TensorRTEnvironment("10.13.3.9", "NVIDIA L4", "8.9", "12.4")
    monkeypatch.setattr(tensorrt.build, "tensorrt_environment", lambda: env)
    monkeypatch.setattr(tensorrt.build, "onnx_for_engine", lambda *a, **k: None)
    monkeypatch.setattr(tensorrt.build, "default_engine_path", lambda *a: tmp_path / "e.plan")
    monkeypatch.setattr(tensorrt.build, "build_engine", lambda *a, **k: engine)
    result = runner.invoke(app, ["trt", "test_vit", "--precision", "int8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "WARNING (build): timing cache t was not usable (x)" in result.stderr
    assert "TensorRT vs test_vit_int8.onnx on ONNX Runtime (gated)" in result.stdout
    assert "TensorRT vs test_vit.onnx (reported, not gated)" in result.stdout and "0.410000" in result.stdout


def test_validation_uses_the_accuracy_gate_budget():
    from vitexport.export.validate import TOLERANCES

    fp16 = validation_tolerance(Precision.fp16)
    assert fp16 == TOLERANCES.get("fp16", fp16)
    assert validation_tolerance(Precision.fp32) == fp16  # TF32 matmuls: the fp16 budget, not the fp32 one
    assert fp16.max_abs > TOLERANCES["fp32"].max_abs


# --- build steps against the TensorRT API ----------------------------------------------------------------------
# TensorRT cannot run here (no GPU): these stand-ins implement only the calls and documented return values
# (IBuilderConfig.create_timing_cache/set_timing_cache, ITensor.dtype, IExecutionContext.set_input_shape/
# set_tensor_address -> bool) that the step under test makes.


class FakeConfig:
    def __init__(self, accepts: bool = True, create_fails: type[Exception] | None = None, returns_none=False):
        self.accepts, self.create_fails, self.returns_none = accepts, create_fails, returns_none
        self.cache = None

    def create_timing_cache(self, blob: bytes):
        if blob and self.create_fails:
            raise self.create_fails("Serialized timing cache is corrupted or incompatible")
        return None if blob and self.returns_none else {"blob": blob}

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # another GPU's timings must not be used
        ok = self.accepts or not cache["blob"]
        self.cache = cache if ok else self.cache
        return ok


def test_timing_cache_is_reused_when_usable(tmp_path):
    from vitexport.export.tensorrt.build import use_timing_cache

    config, path = FakeConfig(), tmp_path / "timing.cache"
    assert use_timing_cache(config, path) is None and config.cache == {"blob": b""}  # no file yet: empty
    path.write_bytes(b"cache")
    assert use_timing_cache(config, path) is None and config.cache == {"blob": b"cache"}


@pytest.mark.parametrize(
    "config",
    [FakeConfig(accepts=False), FakeConfig(create_fails=RuntimeError), FakeConfig(returns_none=True)],
    ids=["refused", "raises", "none"],
)
def test_an_unusable_timing_cache_falls_back_to_an_empty_one(tmp_path, config):
    from vitexport.export.tensorrt.build import use_timing_cache

    path = tmp_path / "timing.cache"
    path.write_bytes(b"from TensorRT 10.8")
    warning = use_timing_cache(config, path)
    assert config.cache == {"blob": b""}
    assert warning.startswith(f"timing cache {path} was not usable") and "empty one" in warning
    assert "\n" not in warning


def test_build_warnings_round_trip_through_the_sidecar(tmp_path):
    source = onnx_artifact(tmp_path)
    details = replace(_details(), build_warnings=("timing cache timing.cache was not usable (x); ...",))
    artifact = engine_artifact(source, EnginePaths(tmp_path / "e.plan"), details)
    artifact.path.write_bytes(b"plan")
    artifact.save()
    assert EngineDetails.from_artifact(load_artifact(artifact.path)) == details
    # Sidecars written before the field existed still load.
    legacy = artifact.with_(details={k: v for k, v in artifact.details.items() if k != "build_warnings"})
    assert EngineDetails.from_artifact(legacy).build_warnings == ()


class FakeTensor:
    def __init__(self, dtype):
        self.dtype = dtype


class FakeLayer:
    def __init__(self, name, type_, dtypes):
        self.name, self.type, self.outputs = name, type_, [FakeTensor(d) for d in dtypes]
        self.num_outputs = len(dtypes)
        self.precision, self.output_types = None, {}

    def get_output(self, j):
        return self.outputs[j]

    def set_output_type(self, j, dtype):
        if self.outputs[j].dtype not in (FakeTrt.float32, FakeTrt.float16):
            raise AssertionError("TensorRT fails the build: a float output type on an integer tensor")
        self.output_types[j] = dtype


class FakeTrt:
    float32, float16, int32, int64 = "float32", "float16", "int32", "int64"

    class LayerType:
        NORMALIZATION, SOFTMAX, SHAPE, ELEMENTWISE, REDUCE = "norm", "softmax", "shape", "eltwise", "reduce"


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self.layers[i]


def test_pinning_leaves_integer_layers_alone():
    from vitexport.export.tensorrt.build import _pin_fp32

    t, lt = FakeTrt, FakeTrt.LayerType
    layers = [
        FakeLayer("/blocks.0/norm1/LayerNormalization", lt.NORMALIZATION, [t.float32]),
        # A decomposed LayerNorm: the name matches its shape arithmetic too.
        FakeLayer("/blocks.0/norm1/layer_norm/Shape", lt.SHAPE, [t.int64]),
        FakeLayer("/blocks.0/norm1/layer_norm/ReduceMean", lt.REDUCE, [t.float32]),
        FakeLayer("/blocks.0/attn/Softmax", lt.SOFTMAX, [t.float32]),
        FakeLayer("/blocks.0/Add", lt.ELEMENTWISE, [t.float32]),
    ]
    pinned = _pin_fp32(FakeTrt, FakeNetwork(layers), ("NORMALIZATION",))
    assert pinned == ["/blocks.0/norm1/LayerNormalization", "/blocks.0/norm1/layer_norm/ReduceMean"]
    assert layers[1].precision is None and layers[1].output_types == {}
    assert layers[0].precision == t.float32 and layers[0].output_types == {0: t.float32}
    assert layers[3].precision is None  # Softmax only with fp32_softmax
    assert "/blocks.0/attn/Softmax" in _pin_fp32(FakeTrt, FakeNetwork(layers), ("NORMALIZATION", "SOFTMAX"))


class FakeContext:
    def __init__(self, shape_ok=True, address_ok=True):
        self.shape_ok, self.address_ok = shape_ok, address_ok
        self.batch = 1

    def set_input_shape(self, name, shape) -> bool:
        self.batch = shape[0]
        return self.shape_ok

    def set_tensor_address(self, name, ptr) -> bool:
        return self.address_ok

    def get_tensor_shape(self, name):
        return (self.batch, 10)

    def execute_async_v3(self, stream) -> bool:
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, context):
        self.context = context
        self.contexts_created = 0

    def create_execution_context(self):
        self.contexts_created += 1
        return self.context

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_name(self, i):
        return ("pixel_values", "logits")[i]

    def get_tensor_mode(self, name):
        return "input" if name == "pixel_values" else "output"


class FakeRuntimeTrt:
    class TensorIOMode:
        INPUT = "input"

    @staticmethod
    def nptype(dtype):
        return np.float32


class FakeDevice:
    stream = 0

    def upload(self, array):
        return 1

    def alloc(self, nbytes):
        return 2

    def copy_in(self, ptr, array):
        pass

    def synchronize(self):
        pass

    def download(self, ptr, shape, dtype):
        return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (FakeContext(shape_ok=False), r"refused input shape 1x3x64x64 for 'pixel_values'"),
        (FakeContext(address_ok=False), r"refused the device buffer of tensor '(pixel_values|logits)'"),
        (None, "could not create an execution context"),
    ],
)
def test_run_engine_checks_what_tensorrt_returns(context, message):
    from vitexport.export.tensorrt import run_engine

    x = {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)}
    with pytest.raises(EngineBuildError, match=message):
        run_engine(FakeRuntimeTrt, FakeEngine(context), FakeDevice(), x)
    assert run_engine(FakeRuntimeTrt, FakeEngine(FakeContext()), FakeDevice(), x)["logits"].shape == (1, 10)


class CountingDevice(FakeDevice):
    """Hands out numbered buffers and remembers what was allocated, freed and copied in."""

    def __init__(self):
        self.allocated, self.freed, self.copied = [], [], []

    def alloc(self, nbytes):
        self.allocated.append(nbytes)
        return len(self.allocated)

    def free(self, ptr):
        self.freed.append(ptr)

    def copy_in(self, ptr, array):
        self.copied.append((ptr, array.nbytes))


def test_engine_runner_keeps_its_context_and_buffers_across_calls():
    from vitexport.export.tensorrt import EngineRunner

    device, engine = CountingDevice(), FakeEngine(FakeContext())
    run = EngineRunner(FakeRuntimeTrt, engine, device)
    x1 = {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)}
    for _ in range(3):
        assert run(x1)["logits"].shape == (1, 10)
    assert engine.contexts_created == 1
    assert len(device.allocated) == 2 and not device.freed  # one input and one output buffer, reused
    run({"pixel_values": np.zeros((4, 3, 64, 64), np.float32)})  # a larger batch: both buffers grow once
    assert device.freed == [1, 2] and len(device.allocated) == 4
    assert device.copied[-1] == (3, 4 * 3 * 64 * 64 * 4)  # the batch went into the new input buffer


class FakeCudaLib:
    """The driver calls DeviceSession makes, each returning CUDA_SUCCESS (0) unless named in `failing`."""

    def __init__(self, failing: dict[str, int]):
        self.failing, self.calls = failing, []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            return self.failing.get(name, 0)

        return call

    def cuGetErrorName(self, result, text):
        text._obj.value = b"CUDA_ERROR_OUT_OF_MEMORY" if result == 2 else b"CUDA_ERROR_UNKNOWN"
        return 0


def _fake_driver(monkeypatch, failing):
    from vitexport.export import cuda

    d = object.__new__(cuda._Driver)
    d.lib = FakeCudaLib(failing)
    monkeypatch.setattr(cuda, "_driver", d)
    return d.lib


@pytest.mark.parametrize("failing", ["cuMemAlloc_v2", "cuStreamCreate"])
def test_cuda_failures_in_the_device_session_are_one_line_errors(monkeypatch, failing):
    from vitexport.errors import VitExportError
    from vitexport.export.cuda import CudaError, DeviceSession

    lib = _fake_driver(monkeypatch, {failing: 2})
    with pytest.raises(CudaError) as e, DeviceSession() as device:
        device.alloc(1024)
    assert isinstance(e.value, VitExportError)  # the CLI prints it as one red line, exit 1
    assert str(e.value) == f"CUDA call {failing} failed with CUDA_ERROR_OUT_OF_MEMORY"
    assert lib.calls.count("cuDevicePrimaryCtxRelease_v2") == 1  # the context is released either way


def test_cli_prints_a_cuda_failure_as_one_line(monkeypatch):
    import vitexport.export.tensorrt as tensorrt
    from vitexport.export.cuda import CudaError

    def fail(*args, **kwargs):
        raise CudaError("CUDA call cuMemAlloc_v2 failed with CUDA_ERROR_OUT_OF_MEMORY")

    env = tensorrt.TensorRTEnvironment("10.13.3.9", "NVIDIA L4", "8.9", "12.4")  # as if there were a GPU
    monkeypatch.setattr(tensorrt.build, "tensorrt_environment", lambda: env)
    monkeypatch.setattr(tensorrt.build, "onnx_for_engine", lambda *a, **k: None)
    monkeypatch.setattr(tensorrt.build, "default_engine_path", lambda *a: Path("x.plan"))
    monkeypatch.setattr(tensorrt.build, "build_engine", fail)
    result = runner.invoke(app, ["trt", "test_vit"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: CUDA call cuMemAlloc_v2 failed with CUDA_ERROR_OUT_OF_MEMORY"


# --- the fusion audit --------------------------------------------------------------------------------------------


def _layers(name: str) -> str:
    return (DATA / name).read_text()


def test_audit_passes_a_fused_engine():
    audit = audit_layer_info(_layers("trt10_vit_fp16_fused.layers.json"), expected_attention=2, precision="fp16")
    assert audit.passed, audit.warnings
    assert audit.detailed and audit.fused_attention == 2 and audit.unfused_softmax == 0
    assert audit.layernorm_layers == 5 and audit.layernorm_not_fp32 == () and audit.layernorm_unknown == 0
    assert audit.to_dict()["passed"] is True


def test_audit_warns_about_an_unfused_engine():
    audit = audit_layer_info(_layers("trt10_vit_fp16_unfused.layers.json"), expected_attention=2, precision="fp16")
    assert not audit.passed
    assert audit.fused_attention == 0 and audit.unfused_softmax == 2
    assert len(audit.layernorm_not_fp32) == 2  # the two norm1 layers ran in FP16
    text = " | ".join(audit.warnings)
    assert "attention is not fused: 0 fused MHA kernels for 2 attention blocks" in text
    assert "2 Softmax layers run outside fused attention" in text
    assert "2 LayerNorm layers are not FP32" in text


def _as_tensorrt11(info: dict) -> dict:
    """TensorRT 10 layer information in TensorRT 11's schema: "Format/Datatype" split, "Bindings" -> "I/O Tensors"."""
    names = {"FP16": "Half", "FP32": "Float"}

    def tensor(t: dict) -> dict:
        text = t.pop("Format/Datatype")
        dtype = next(v for k, v in names.items() if k in text)
        return t | {"Format": "Row major linear (kLINEAR)", "DataType": dtype}

    layers = [
        la | {"Inputs": [tensor(t) for t in la["Inputs"]], "Outputs": [tensor(t) for t in la["Outputs"]]}
        for la in info["Layers"]
    ]
    return {"Layers": layers, "I/O Tensors": [{"Name": n} for n in info["Bindings"]]}


@pytest.mark.parametrize("schema", ["tensorrt10", "tensorrt11"])
def test_audit_counts_layernorm_fused_with_its_fp32_casts_as_fp32(schema):
    # The fixture is written in the inspector's documented JSON format, not captured from a GPU (see its _comment):
    # a strongly typed fp16 engine of export/fp16.py's graph, where Myelin fuses Cast(fp16->fp32) -> LayerNorm ->
    # Cast(fp32->fp16) into one `__myl_Cast...Cast` kernel with Half I/O and FP32 maths.
    info = json.loads(_layers("trt10_vit_fp16_strongly_typed.layers.json"))
    if schema == "tensorrt11":
        info = _as_tensorrt11(info)
    audit = audit_layer_info(info, expected_attention=2, precision="fp16")
    assert audit.passed, audit.warnings
    assert audit.layernorm_layers == 5 and audit.layernorm_not_fp32 == () and audit.layernorm_fp32_behind_casts == 5
    assert audit.fused_attention == 2 and audit.unfused_softmax == 0


def test_audit_needs_the_graphs_casts_on_both_sides_of_layernorm():
    info = json.loads(_layers("trt10_vit_fp16_strongly_typed.layers.json"))
    norm = next(la for la in info["Layers"] if "/norm/LayerNormalization" in la["Metadata"])
    # Only the input is cast back from the graph: the output side ran in FP16.
    norm["Metadata"] = "[ONNX Layer: /norm/LayerNormalization_input_cast0]\x1f[ONNX Layer: /norm/LayerNormalization]"
    audit = audit_layer_info(info, expected_attention=2, precision="fp16")
    assert audit.layernorm_not_fp32 == (norm["Name"],) and audit.layernorm_fp32_behind_casts == 4
    # Myelin's own casts (no ONNX Cast in the Metadata, weakly typed): an FP16 LayerNorm, as in the unfused sample.
    unfused = audit_layer_info(_layers("trt10_vit_fp16_unfused.layers.json"), expected_attention=2, precision="fp16")
    assert unfused.layernorm_fp32_behind_casts == 0 and len(unfused.layernorm_not_fp32) == 2


def test_audit_counts_too_few_fused_kernels():
    info = json.loads(_layers("trt10_vit_fp16_fused.layers.json"))
    audit = audit_layer_info(info, expected_attention=12, precision="fp16")  # a 12-block model, 2 fused
    assert audit.warnings == ("attention is not fused: 2 fused MHA kernels for 12 attention blocks",)


def test_audit_of_fp32_engines_checks_layernorm_only():
    audit = audit_layer_info(_layers("trt10_vit_fp16_unfused.layers.json"), expected_attention=2, precision="fp32")
    assert len(audit.warnings) == 1 and "LayerNorm" in audit.warnings[0]


def test_audit_without_detailed_verbosity_says_so():
    audit = audit_layer_info(_layers("trt10_vit_names_only.layers.json"), expected_attention=2, precision="fp16")
    assert not audit.detailed and not audit.passed and audit.layers == 16
    assert "ProfilingVerbosity.DETAILED" in audit.warnings[0]


def test_audit_reads_tensorrt11_split_type_fields():
    # TensorRT 11 replaced "Bindings" by "I/O Tensors" and split a tensor's "Format/Datatype".
    def tensor(dtype):
        return {"Name": "x", "Dimensions": [8, 17, 64], "Format": "Row major linear (kLINEAR)", "DataType": dtype}

    info = {
        "Layers": [
            {"Name": "_gemm_mha_v2_myl0_1", "LayerType": "kgen", "Inputs": [tensor("Half")], "Outputs": []},
            {"Name": "ln", "LayerType": "Normalization", "Inputs": [tensor("Float")], "Outputs": [tensor("Half")]},
        ],
        "I/O Tensors": [{"Name": "pixel_values", "IOMode": "Input", "DataType": "Float"}],
    }
    audit = audit_layer_info(info, expected_attention=1, precision="fp16")
    assert audit.fused_attention == 1 and audit.layernorm_not_fp32 == ("ln",)


def test_audit_counts_attention_layers_as_fused():
    # TensorRT's IAttention layer (what its parser makes of the ONNX Attention op) is one fused kernel.
    layer = {"Name": "/blocks.0/attn/Attention", "LayerType": "Attention", "Inputs": [], "Outputs": []}
    audit = audit_layer_info({"Layers": [layer]}, expected_attention=1, precision="fp16")
    assert audit.fused_attention == 1 and audit.unfused_softmax == 0


def test_audit_flags_layernorm_of_unknown_precision():
    info = {
        "Layers": [
            {"Name": "ln", "LayerType": "Normalization", "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]}
        ]
    }
    audit = audit_layer_info(info, expected_attention=0, precision="fp16")
    assert audit.layernorm_unknown == 1 and "not reported" in audit.warnings[0]


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        ({"Format/Datatype": "Row major linear FP32"}, "fp32"),
        ({"Format/Datatype": "Channel major FP16 format where channel % 2 == 0"}, "fp16"),
        ({"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}, "int8"),
        ({"Format/Datatype": "Half"}, "fp16"),
        ({"Format/Datatype": "Float"}, "fp32"),
        ({"DataType": "BFloat16", "Format": "Row major linear BF16"}, "bf16"),
        ({"Format/Datatype": "N/A due to dynamic shapes"}, None),
        ({}, None),
    ],
)
def test_tensor_precision(tensor, expected):
    assert tensor_precision(tensor) == expected


def test_expected_attention_blocks():
    assert expected_attention_blocks("test_vit") == get_spec("test_vit").arch.depth == 2
    assert expected_attention_blocks("resnet50") == 0
    assert expected_attention_blocks("no_such_model") == 0


# --- finding the ONNX to build from ------------------------------------------------------------------------------


def test_a_model_name_that_cannot_be_built_fails_before_exporting(tmp_path):
    with pytest.raises(
        GraphPrecisionError,
        match=r"Q/DQ ONNX, not an fp32 one; export first, then make it with `vitexport optimize MODEL\.onnx",
    ):
        onnx_for_engine("test_vit", BuildSettings(precision=Precision.int8), "11.4.0", workdir=tmp_path)
    with pytest.raises(UnknownModelError, match="did you mean"):
        onnx_for_engine("test_vitt", BuildSettings(), "10.13.3.9", workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was exported


def test_tensorrt11_fp16_derives_the_fp16_graph(exported):
    """Strongly typed TensorRT 11 needs precision in the graph: the optimize stage makes (then reuses) it."""
    settings = BuildSettings(precision=Precision.fp16)
    graph = onnx_for_engine(exported.path, settings, "11.4.0")
    assert graph.precision == "fp16" and graph.format == "onnx" and graph.validation  # passed the accuracy gate
    assert fp32_reference(graph).path.resolve() == exported.path.resolve()  # validation's fp32 reference
    plan = plan_build(graph, Precision.fp16, "11.4.0")
    assert plan.strongly_typed and plan.builder_flags == () and plan.onnx == graph.path
    mtime = graph.path.stat().st_mtime_ns
    assert onnx_for_engine(exported.path, settings, "11.4.0") == graph
    assert graph.path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # TensorRT 10 builds fp16 from the fp32 graph itself, with builder flags.
    assert onnx_for_engine(exported.path, settings, "10.13.3.9") == exported


def test_an_onnx_file_is_used_as_is(tmp_path):
    artifact = onnx_artifact(tmp_path)
    settings = BuildSettings()
    assert onnx_for_engine(artifact.path, settings, "10.13.3.9") == artifact
    assert onnx_for_engine(artifact.sidecar, settings, "10.13.3.9") == artifact
    with pytest.raises(EngineBuildError, match="takes 64px images"):
        onnx_for_engine(artifact.path, settings, "10.13.3.9", img_size=224)


# --- the error path on machines without TensorRT or a GPU (this one) ---------------------------------------------


@without_gpu
def test_environment_says_what_is_missing():
    with pytest.raises(TensorRTUnavailable) as e:
        tensorrt_environment()
    message = str(e.value)
    assert "\n" not in message
    assert "pip install 'vitexport[gpu]' --extra-index-url https://pypi.nvidia.com" in message
    assert "NVIDIA GPU and driver" in message


@without_gpu
def test_cli_without_gpu_is_one_line():
    result = runner.invoke(app, ["trt", "test_vit"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot build TensorRT engines here: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "pip install 'vitexport[gpu]'" in result.stderr


@without_gpu
def test_cli_subprocess_without_gpu(tmp_path):
    vitexport = Path(sys.executable).with_name("vitexport")
    command = [str(vitexport)] if vitexport.exists() else [sys.executable, "-m", "vitexport.cli"]
    result = subprocess.run(
        [*command, "trt", "test_vit"], capture_output=True, text=True, cwd=tmp_path, env=os.environ | {"COLUMNS": "200"}
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot build TensorRT engines here"), result.stderr
    assert list(tmp_path.iterdir()) == []  # no export was started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "8:1:4"], "MIN <= OPT <= MAX"),
        (["--precision", "bf16"], "--precision must be fp16, fp32 or int8"),
        (["--opt-level", "7"], "--opt-level must be 0-5"),
        (["--workspace", "0"], "--workspace must be"),
    ],
)
def test_cli_rejects_bad_options_before_looking_for_a_gpu(args, message):
    result = runner.invoke(app, ["trt", "test_vit", *args])
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- GPU hosts: real engines ------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", [Precision.fp32, Precision.fp16])
def test_build_a_real_engine(exported, tmp_path, precision):
    from vitexport.export.tensorrt import build_engine

    settings = BuildSettings(precision=precision, profile=BatchProfile(1, 4, 8), workspace_gib=1)
    source = onnx_for_engine(exported.path, settings, ENV.tensorrt_version)  # the FP16 graph on TensorRT 11
    artifact = build_engine(source, tmp_path / f"test_vit_{precision.value}.plan", settings, environment=ENV)

    paths = EnginePaths(artifact.path)
    assert all(p.is_file() for p in (paths.engine, paths.sidecar, paths.layer_info, paths.trtexec))
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert artifact.validation["passed"] and {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4, 8}
    details = EngineDetails.from_artifact(load_artifact(artifact.path))
    assert details.tensorrt_version == ENV.tensorrt_version and details.compute_capability == ENV.compute_capability
    # The audit ran on the engine's own layer information; its result is data, not a pass/fail of the build.
    info = json.loads(paths.layer_info.read_text())
    audit = audit_layer_info(info, expected_attention=2, precision=precision).to_dict()
    assert details.fusion_audit == json.loads(json.dumps(audit))  # as the sidecar stores it
    assert details.fusion_audit["detailed"]

    # A second build reads the timing cache the first one wrote.
    again = build_engine(source, tmp_path / "again.plan", settings, environment=ENV)
    assert again.validation["passed"]
