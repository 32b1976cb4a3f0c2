"""The `vitexport` command: thin. Each command parses, calls one or two stage functions, and renders a table,
a path or --json. Heavy libraries are imported inside the commands so that `vitexport --help` is instant."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from vitexport.errors import VitExportError

app = typer.Typer(
    help="Vision Transformers from PyTorch to verified ONNX, optimized variants, TensorRT engines and Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one red line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except VitExportError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def progress_status(enabled: bool = True) -> Iterator[Any]:
    """A spinner on stderr for long work, on a terminal only (a log or a pipe gets the result, not the spinner);
    yields a callback that updates its text."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(message)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=max(120, len(columns) * 14)).print(table)


@app.command()
def models(
    as_json: JsonFlag = False,
    family: Annotated[str | None, typer.Option(help="Only this family: vit, deit or resnet.")] = None,
    include_test: Annotated[bool, typer.Option("--include-test", help="Also list the tiny test configs.")] = False,
) -> None:
    """List the registered models with their preprocessing, parameter count and MACs."""
    from vitexport.models import list_models

    specs = [s for s in list_models(include_test=include_test) if family in (None, s.family)]
    if as_json:
        print_json([s.to_dict() for s in specs])
        return
    rows = [
        [
            s.name,
            ", ".join(s.aliases),
            s.img_size,
            f"{s.num_params / 1e6:.1f}M",
            f"{s.macs() / 1e9:.2f}",
            f"{s.preprocess.interpolation} {s.preprocess.crop_pct:g}",
            "yes" if s.distilled else "",
        ]
        for s in specs
    ]
    print_table(None, ["model", "aliases", "size", "params", "GMACs", "resize, crop", "distilled"], rows)


@app.command()
def onnx(
    model: Annotated[str, typer.Argument(help="Registered model name or alias, e.g. deit_base.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="ONNX file [default: MODEL.onnx].")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="timm, official DeiT or Hugging Face weights.")] = None,
    pretrained: Annotated[bool, typer.Option(help="Download timm's weights (needs network).")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset [default: 18].")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input size; position embeddings are resampled.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Fix the batch size [default: dynamic].")] = None,
    heads: Annotated[str, typer.Option(help="Distilled DeiT outputs: avg, or all (also logits_cls/_dist).")] = "avg",
    attention: Annotated[str, typer.Option(help="sdpa, or explicit MatMul-Softmax-MatMul.")] = "sdpa",
    as_json: JsonFlag = False,
) -> None:
    """Export a model to ONNX (dynamic batch), check the graph and validate it on ONNX Runtime against PyTorch."""
    with user_errors():
        from vitexport.export.onnx import DEFAULT_OPSET, Heads, export_onnx

        if heads not in Heads.__members__:
            raise VitExportError(f"--heads must be avg or all, not {heads!r}")
        if attention not in ("sdpa", "explicit"):
            raise VitExportError(f"--attention must be sdpa or explicit, not {attention!r}")
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
                heads=Heads(heads),
                attention=attention,
                progress=progress,
            )
    if as_json:
        print_json(artifact.to_dict() | {"path": str(artifact.path), "sidecar": str(artifact.sidecar)})
        return
    reports = artifact.validation["reports"]
    rows = [
        [r["output"], r["batch_size"], f"{r['max_abs']:.2e}", f"{r['cosine']:.8f}", f"{r['top1_agreement']:.2f}"]
        for r in reports
    ]
    print_table("ONNX Runtime vs PyTorch", ["output", "batch", "max abs diff", "cosine", "top-1 agreement"], rows)
    typer.echo(str(artifact.path))


@app.command()
def trt(
    model_or_onnx: Annotated[str, typer.Argument(help="A registered model (exported first) or a vitexport ONNX file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Engine [MODEL_PRECISION.plan]")] = None,
    precision: Annotated[str, typer.Option(help="fp16, fp32 or int8 (int8 needs a Q/DQ ONNX).")] = "fp16",
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
        from vitexport.export.tensorrt import (
            BatchProfile,
            BuildSettings,
            Precision,
            build_engine,
            default_engine_path,
            onnx_for_engine,
            tensorrt_environment,
        )

        if precision not in Precision.__members__:
            raise VitExportError(f"--precision must be fp16, fp32 or int8, not {precision!r}")
        settings = BuildSettings(
            precision=Precision(precision),
            profile=BatchProfile.parse(batch),
            workspace_gib=workspace,
            opt_level=opt_level,
            timing_cache=timing_cache,
            fp32_softmax=fp32_softmax,
        )
        env = tensorrt_environment()  # here, without TensorRT or a GPU: one line and exit 1
        with progress_status(not as_json) as progress:
            version = env.tensorrt_version
            source = onnx_for_engine(model_or_onnx, settings, version, img_size=img_size, progress=progress)
            output = output or default_engine_path(source, settings.precision)
            artifact = build_engine(source, output, settings, environment=env, progress=progress)
    audit = artifact.details["fusion_audit"]
    for warning in audit["warnings"]:
        typer.secho(f"WARNING (fusion audit): {warning}", fg="yellow", bold=True, err=True)
    for warning in artifact.details.get("build_warnings", []):
        typer.secho(f"WARNING (build): {warning}", fg="yellow", bold=True, err=True)
    if as_json:
        print_json(artifact.to_dict() | {"path": str(artifact.path), "sidecar": str(artifact.sidecar)})
        return
    d = artifact.details
    profile = "{min}:{opt}:{max}".format(**d["profile"])
    fused = f"{audit['fused_attention']}/{audit['expected_attention']}"
    not_fp32 = len(audit["layernorm_not_fp32"])
    row = [d["precision"], profile, fused, audit["unfused_softmax"], not_fp32, d["build_seconds"]]
    print_table(
        f"TensorRT {d['tensorrt_version']} on {d['gpu_name']} (sm {d['compute_capability']})",
        ["precision", "profile", "fused MHA", "unfused Softmax", "LayerNorm not FP32", "build s"],
        [row],
    )
    validation = artifact.validation
    columns = ["output", "batch", "max abs diff", "cosine", "top-1 agreement"]
    tables = [(f"TensorRT vs {validation['reference']} on ONNX Runtime (gated)", validation["reports"])]
    if "fp32_drift" in validation:  # int8: gated against its Q/DQ graph; drift from fp32 is information
        tables.append((f"TensorRT vs {validation['fp32_reference']} (reported, not gated)", validation["fp32_drift"]))
    for title, reports in tables:
        rows = [
            [r["output"], r["batch_size"], f"{r['max_abs']:.2e}", f"{r['cosine']:.6f}", f"{r['top1_agreement']:.2f}"]
            for r in reports
        ]
        print_table(title, columns, rows)
    typer.echo(str(artifact.path))


@app.command()
def repo(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL_OR_ONNX...",
            help="A registered model (exported to ONNX first) or artifact files: ONNX, OpenVINO IR, or TensorRT "
            "engines (several: one per GPU compute capability). Several CPU variants of one model: the fastest "
            "that passed its accuracy gate is served, timed here.",
        ),
    ],
    repo_dir: Annotated[Path, typer.Option("--repo", help="Triton model repository.")] = Path("model_repository"),
    name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the model's).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="python-onnxruntime, python-openvino, onnxruntime, openvino or tensorrt "
            "(default: by artifact: ONNX python-onnxruntime, OpenVINO IR python-openvino, engine tensorrt)."
        ),
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Batch limit (default: 8; engines: profile max).")] = None,
    preferred_batch_size: Annotated[list[int] | None, typer.Option(help="Preferred batch size (repeatable).")] = None,
    queue_delay_us: Annotated[int, typer.Option(help="Longest wait to fill a batch, in microseconds.")] = 1000,
    instances: Annotated[int, typer.Option(help="Model instances (one Python stub process each).")] = 1,
    version: Annotated[int | None, typer.Option(help="Version number (default: next free).")] = None,
    ensemble: Annotated[bool, typer.Option(help="Also write the NAME_image ensemble (image bytes -> top-k).")] = True,
    top_k: Annotated[int, typer.Option(help="Classes the image ensemble returns.")] = 5,
    ort_trt_fp16: Annotated[bool, typer.Option(help="onnxruntime backend: TensorRT FP16 accelerator.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a model into a Triton model repository: config.pbtxt, labels, a new version, and the image ensemble."""
    import tempfile

    with user_errors(), tempfile.TemporaryDirectory(prefix="vitexport-repo-") as tmp:
        from vitexport.serving.config import Backend, Batching
        from vitexport.serving.repository import add_model
        from vitexport.serving.server import unavailable_reason

        choices = [b.value for b in Backend]
        if backend is not None and backend not in choices:
            raise VitExportError(f"--backend must be one of {', '.join(choices)}, not {backend!r}")
        with progress_status(not as_json) as progress:
            artifacts = [_source_artifact(source, None, Path(tmp), progress) for source in sources]
        timings = []
        if len(artifacts) > 1 and all(a.format != "tensorrt" for a in artifacts):
            # Several CPU variants of one model: serve the fastest that passed its accuracy gate, timed here.
            from vitexport.export.select import rank_by_speed

            with progress_status(not as_json) as progress:
                timings = rank_by_speed(artifacts, batch=max_batch_size or Batching.max_batch_size, progress=progress)
            artifacts = [timings[0].artifact]
        batching = None
        if max_batch_size is not None or preferred_batch_size or queue_delay_us != Batching.max_queue_delay_us:
            size = max_batch_size if max_batch_size is not None else Batching.max_batch_size
            batching = Batching(size, tuple(preferred_batch_size or ()), queue_delay_us)
        added = add_model(
            repo_dir,
            artifacts,
            backend=Backend(backend) if backend else None,
            name=name,
            batching=batching,
            instances=instances,
            version=version,
            ensemble=ensemble,
            top_k=top_k,
            tensorrt_accelerator=ort_trt_fp16,
        )
        from vitexport.serving.repository import scan

        configs = scan(repo_dir)
        notes = {m: unavailable_reason(m, configs) for m in added.models}
    if as_json:
        print_json(
            {
                "name": added.name,
                "version": added.version,
                "path": str(added.path),
                "backend": added.backend.value,
                "models": list(added.models),
                "local": {m: reason is None for m, reason in notes.items()},
                "timed": {str(t.artifact.path): round(t.img_s, 2) for t in timings},
            }
        )
        return
    if timings:
        rows = [[t.artifact.path.name, t.artifact.precision, f"{t.img_s:.1f}"] for t in timings]
        print_table("fastest gated variant first (timed here)", ["variant", "precision", "img/s"], rows)
    rows = [[m, added.version, notes[m] or "yes"] for m in added.models]
    print_table(f"{repo_dir} ({added.backend.value})", ["model", "version", "serves on the local Triton"], rows)
    typer.echo(str(added.path))


@app.command()
def serve(
    repo_dir: Annotated[Path, typer.Option("--repo", help="Triton model repository.")] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: any free port).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: any free port).")] = 8002,
    models: Annotated[list[str] | None, typer.Option("--models", help="Only these models (repeatable).")] = None,
) -> None:
    """Start Triton on a model repository until Ctrl-C or SIGTERM; models it cannot run here are skipped."""
    import signal
    import time

    def terminate(signum, frame):  # SIGTERM takes the same orderly way out as Ctrl-C
        raise KeyboardInterrupt

    with user_errors():
        from vitexport.serving.server import TritonServer

        names = [n for item in models or [] for n in item.split(",") if n]
        server = TritonServer(
            repo_dir,
            host=host,
            http_port=http_port or None,
            grpc_port=grpc_port or None,
            metrics_port=metrics_port or None,
            models=names or None,
        )
        for model, reason in server.skipped.items():
            typer.secho(f"note: not loading {model}: {reason}", fg="yellow", err=True)
        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            with server:
                e = server.endpoints
                typer.echo(f"HTTP    {e.http}\ngRPC    {e.grpc}\nmetrics {e.metrics}")
                typer.echo(f"models  {', '.join(server.models) or 'none'}")
                typer.echo("ready (Ctrl-C to stop)")
                while server.running:
                    time.sleep(0.5)
                raise VitExportError(f"tritonserver stopped unexpectedly: {server.log_error()}")
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            signal.signal(signal.SIGTERM, previous)


@app.command()
def infer(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    url: Annotated[str | None, typer.Option(help="Server (default: localhost:8000 (http), :8001 (grpc)).")] = None,
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    model: Annotated[str | None, typer.Option(help="Served model (default: the one NAME_image ensemble).")] = None,
    top_k: Annotated[int, typer.Option(help="Classes per image.")] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server at each step.")] = 60.0,
    as_json: JsonFlag = False,
) -> None:
    """Classify images on a running Triton server and print labels and scores."""
    with user_errors():
        from vitexport.serving.client import Protocol, classify

        if protocol not in Protocol.__members__:
            raise VitExportError(f"--protocol must be http or grpc, not {protocol!r}")
        server = url or Protocol(protocol).default_url
        results = classify(server, images, protocol=protocol, model=model, top_k=top_k, timeout=timeout)
    if as_json:
        print_json([{"image": str(path)} | r.to_dict() for path, r in zip(images, results, strict=True)])
        return
    rows = [
        [str(path) if rank == 0 else "", rank + 1, label, f"{score:.4f}"]
        for path, r in zip(images, results, strict=True)
        for rank, (label, score) in enumerate(zip(r.labels, r.scores, strict=True))
    ]
    print_table(None, ["image", "rank", "label", "score"], rows)


def _source_artifact(model: str, checkpoint: Path | None, folder: Path, progress) -> Any:
    """MODEL_OR_ONNX: an artifact's model file or sidecar, or a registered model to export to fp32 ONNX first."""
    from vitexport.artifacts import load_artifact
    from vitexport.export.onnx import export_onnx

    path = Path(model)
    if path.exists() or "/" in model or path.suffix in (".onnx", ".json", ".xml", ".plan"):  # a file, not a name
        if checkpoint is not None:
            raise VitExportError("--checkpoint applies to a registered model name, not to an ONNX file")
        return load_artifact(path)
    return export_onnx(model, folder / f"{model}.onnx", checkpoint=checkpoint, progress=progress)


def _render_gate(validation: dict) -> None:
    rows = [
        [
            r["output"],
            r["batch_size"],
            f"{r['max_abs']:.3g}",
            f"{r['mean_abs']:.3g}",
            f"{r['cosine']:.6f}",
            f"{r['top1_agreement']:.3f}",
            f"{r['top5_overlap']:.3f}",
        ]
        for r in [*validation["random"], *validation["images"]]
    ]
    columns = ["output", "batch", "max abs", "mean abs", "cosine", "top-1 agree", "top-5 overlap"]
    print_table(f"{validation['precision']} variant vs fp32 reference", columns, rows)
    if acc := validation.get("accuracy"):
        print_table(
            f"accuracy on {acc['images']} labelled images",
            ["", "top-1 %", "top-5 %"],
            [
                ["reference", f"{acc['reference_top1']:.2f}", f"{acc['reference_top5']:.2f}"],
                ["candidate", f"{acc['candidate_top1']:.2f}", f"{acc['candidate_top5']:.2f}"],
            ],
        )


@app.command()
def optimize(
    model: Annotated[str, typer.Argument(help="An fp32 ONNX artifact (or its sidecar), or a registered model name.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output .onnx, or .xml for openvino.")] = None,
    runtime: Annotated[str, typer.Option(help="onnxruntime or openvino.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="fp32, fp16, bf16 (openvino) or int8.")] = "fp32",
    fuse_attention: Annotated[
        str | None, typer.Option(help="ort, onnx (opset-23 Attention) or none (default: ort; onnx for fp16).")
    ] = None,
    calibration: Annotated[Path | None, typer.Option(help="Image folder for INT8 calibration.")] = None,
    images: Annotated[Path | None, typer.Option(help="Images for the gate; class subfolders add accuracy.")] = None,
    io_type: Annotated[str, typer.Option(help="fp16 graphs: fp32 or fp16 input and output.")] = "fp32",
    quant_method: Annotated[str | None, typer.Option(help="ORT int8: dynamic or static (default: by family).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights, when MODEL is a registered name.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write an optimized variant (fused attention, FP16, BF16, INT8) that passes the accuracy gate; print op counts."""
    with user_errors():
        from vitexport.export.fp16 import IOType
        from vitexport.export.fusion import Fusion
        from vitexport.export.optimize import Precision, Runtime
        from vitexport.export.optimize import optimize as optimize_stage
        from vitexport.export.quantize import QuantMethod

        choices = [
            ("--runtime", runtime, Runtime),
            ("--precision", precision, Precision),
            ("--fuse-attention", fuse_attention, Fusion),
            ("--io-type", io_type, IOType),
            ("--quant-method", quant_method, QuantMethod),
        ]
        for flag, value, enum in choices:
            if value is not None and value not in enum.__members__:
                raise VitExportError(f"{flag} must be one of {', '.join(enum.__members__)}, not {value!r}")
        with progress_status(not as_json) as progress:
            source = _source_artifact(model, checkpoint, output.parent if output else Path("."), progress)
            artifact = optimize_stage(
                source,
                runtime=Runtime(runtime),
                precision=Precision(precision),
                fuse_attention=Fusion(fuse_attention) if fuse_attention else None,
                calibration=calibration,
                images=images,
                output=output,
                io_type=IOType(io_type),
                quant_method=QuantMethod(quant_method) if quant_method else None,
                progress=progress,
            )
    if as_json:
        print_json(artifact.to_dict() | {"path": str(artifact.path), "sidecar": str(artifact.sidecar)})
        return
    counts = artifact.details["op_counts"]
    before, after = counts["before"], counts["after"]
    changed = [op for op in dict.fromkeys([*after, *before]) if before.get(op, 0) != after.get(op, 0)]
    rows = [[op, before.get(op, 0), after.get(op, 0)] for op in changed]
    rows.append(["total", sum(before.values()), sum(after.values())])
    print_table("op counts (changed ops)", ["op", "before", "after"], rows)
    _render_gate(artifact.validation)
    typer.echo(str(artifact.path))


@app.command()
def validate(
    candidate: Annotated[Path, typer.Argument(help="An ONNX or OpenVINO artifact written by vitexport.")],
    reference: Annotated[str, typer.Option(help="The fp32 ONNX artifact, or a registered model (with --checkpoint).")],
    images: Annotated[Path | None, typer.Option(help="Images; class subfolders add top-1/top-5 accuracy.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights of a registered --reference model.")] = None,
    precision: Annotated[str | None, typer.Option(help="Budget to apply [default: the candidate's precision].")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Drift and accuracy of a variant against its fp32 reference; exit 1 if it is over its precision's budget."""
    with user_errors():
        from vitexport.artifacts import load_artifact
        from vitexport.errors import ValidationError
        from vitexport.export.gate import evaluate, load_image_folder, torch_reference
        from vitexport.export.runners import load_runner
        from vitexport.export.validate import TOLERANCES
        from vitexport.models import get_spec
        from vitexport.weights import sha256_file

        cand = load_artifact(candidate)
        budget = precision or cand.precision
        if budget not in TOLERANCES:
            raise VitExportError(f"--precision must be one of {', '.join(TOLERANCES)}, not {budget!r}")
        ref_path = Path(reference)
        # A path-like reference is a file even when missing: "no such file", not "unknown model 'x.xml'".
        if ref_path.exists() or "/" in reference or ref_path.suffix in (".onnx", ".json", ".xml", ".plan"):
            if checkpoint is not None:
                raise VitExportError("--checkpoint applies to a registered --reference model, not to a file")
            ref_artifact = load_artifact(reference)
            if ref_artifact.precision != "fp32":
                raise VitExportError(f"the reference must be fp32; {reference} is {ref_artifact.precision}")
            # Comparing two different models would report drift (or pass on chance agreement), not an error: refuse.
            pairs = [
                ("model", ref_artifact.model, cand.model),
                ("input size", ref_artifact.preprocess.input_size, cand.preprocess.input_size),
                ("outputs", ", ".join(ref_artifact.output_names), ", ".join(cand.output_names)),
            ]
            mismatches = [f"{what} {r} vs {c}" for what, r, c in pairs if r != c]
            ref_sha, cand_sha = ref_artifact.checkpoint_sha256, cand.checkpoint_sha256
            if ref_sha and cand_sha and ref_sha != cand_sha:  # compared only when both know it (not random weights)
                mismatches.append(f"checkpoint sha256 {ref_sha[:12]}... vs {cand_sha[:12]}...")
            if mismatches:
                raise VitExportError(
                    f"{reference} is not the model {candidate} was derived from: " + "; ".join(mismatches)
                )
            ref_run = load_runner(ref_artifact, spinning=False)
        else:
            spec = get_spec(reference)
            if spec.name != get_spec(cand.model).name:
                raise VitExportError(f"{candidate} is a {cand.model}, not a {reference}")
            if spec.img_size != cand.preprocess.input_size:
                # The PyTorch reference is built at the registered size; the candidate's export resampled it.
                raise VitExportError(
                    f"{candidate} takes {cand.preprocess.input_size}px inputs, {spec.name} {spec.img_size}px: "
                    "give its fp32 ONNX export as --reference"
                )
            if checkpoint is None:
                # Random weights differ at every build, so a weightless model cannot be a reference.
                raise VitExportError("a registered --reference model needs --checkpoint with the candidate's weights")
            if cand.checkpoint_sha256 and sha256_file(checkpoint) != cand.checkpoint_sha256:
                raise VitExportError(f"{checkpoint} is not the checkpoint {candidate} was exported from")
            ref_run = torch_reference(reference, checkpoint, cand.output_names)
        image_set = load_image_folder(images, cand.preprocess) if images else None
        with progress_status(not as_json) as progress:
            progress("running the reference and the candidate")
            report = evaluate(
                load_runner(cand, spinning=False),
                ref_run,
                precision=budget,
                input_size=cand.preprocess.input_size,
                output_names=cand.output_names,
                images=image_set,
            )
        if as_json:
            print_json(report.to_dict())
        else:
            _render_gate(report.to_dict())
        if not report.passed:
            raise ValidationError(f"{budget} variant over budget: " + "; ".join(report.failures))


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VitExportError(f"{flag} takes comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise VitExportError(f"{flag} takes positive integers, not {text!r}")
    return values


@app.command()
def bench(
    models: Annotated[
        list[str], typer.Argument(metavar="MODEL...", help="Registered models, e.g. deit_small resnet50.")
    ],
    backends: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated backends [default: all; --quick: torch,onnxruntime-plain]. Peers: torch, "
            "torch-compile, timm, onnxruntime-plain, openvino-plain; ours: onnxruntime, onnxruntime-int8, "
            "openvino-bf16, openvino-int8, tensorrt, triton-grpc, triton-http."
        ),
    ] = None,
    batch_sizes: Annotated[
        str | None, typer.Option(help="In-process batch sizes [default: 1,8,32; --quick 1,8].")
    ] = None,
    concurrency: Annotated[str | None, typer.Option(help="Served concurrencies [default: 1,4,8; --quick 1,4].")] = None,
    threads: Annotated[int, typer.Option(help="Intra-op threads of every runtime.")] = 2,
    duration: Annotated[
        float | None, typer.Option(help="Seconds per measured window [default: 2; --quick 0.4].")
    ] = None,
    windows: Annotated[int | None, typer.Option(help="Measured windows per point [default: 3].")] = None,
    quick: Annotated[bool, typer.Option(help="A short run (under 3 minutes for four models on 2 cores).")] = False,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for bench.json/.md/_*.png (--quick: bench-quick.*).")
    ] = Path("benchmarks/results"),
    workdir: Annotated[
        Path | None,
        typer.Option(help="Artifacts cache (exports, variants) and worker logs [default: ~/.cache/vitexport/bench]."),
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option(help="HOST:HTTP_PORT:GRPC_PORT of a running Triton serving each MODEL [default: start one]."),
    ] = None,
    gemm: Annotated[bool, typer.Option(help="Measure the GEMM peaks (fraction-of-peak columns need them).")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Benchmark models in-process (ours against the peers, side by side) and served through Triton: JSON, Markdown
    and PNG plots in --output."""
    with user_errors():
        from dataclasses import replace

        from vitexport.bench.bench import BenchConfig, run
        from vitexport.bench.report import write
        from vitexport.bench.runners import Backend

        chosen = None
        if backends is not None:
            names = [b.strip() for b in backends.split(",") if b.strip()]
            valid = [b.value for b in Backend]
            bad = [b for b in names if b not in valid]
            if bad or not names:
                raise VitExportError(f"--backends must be among {', '.join(valid)}, not {', '.join(bad) or 'nothing'}")
            chosen = tuple(Backend(b) for b in dict.fromkeys(names))
        config = BenchConfig.quick(tuple(models)) if quick else BenchConfig(tuple(models))
        sweep = config.sweep
        if batch_sizes is not None:
            sweep = replace(sweep, batch_sizes=_int_list("--batch-sizes", batch_sizes))
        if duration is not None:
            sweep = replace(sweep, duration=duration)
        if windows is not None:
            sweep = replace(sweep, windows=windows)
        served = replace(config.served, threads=threads)
        if concurrency is not None:
            served = replace(served, concurrency=_int_list("--concurrency", concurrency))
        config = replace(
            config,
            backends=chosen or config.backends,
            sweep=replace(sweep, threads=threads),
            served=served,
            workdir=workdir or config.workdir,
            triton_url=triton_url,
            gemm=gemm,
            command="vitexport bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "",
        )
        with progress_status(not as_json) as progress:
            result = run(config, progress)
            paths = write(result, output, "bench-quick" if quick else "bench")
    if as_json:
        print_json(result)
        return
    for line in result["verdicts"]:
        typer.echo(line.replace("**", ""))
    for path in paths.values():
        typer.echo(str(path))


def main() -> None:
    app(prog_name="vitexport")


if __name__ == "__main__":
    sys.exit(main())
