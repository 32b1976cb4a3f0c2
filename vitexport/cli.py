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
    """A spinner on stderr for long work; yields a callback that updates its text."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda message: console.print(f"[dim]… {message}[/dim]") if enabled else None
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
    from vitexport.registry import list_models

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
        from export.onnx import DEFAULT_OPSET, Heads, export_onnx

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
        from export.tensorrt import (
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
    rows = [
        [r["output"], r["batch_size"], f"{r['max_abs']:.2e}", f"{r['cosine']:.6f}", f"{r['top1_agreement']:.2f}"]
        for r in artifact.validation["reports"]
    ]
    print_table("TensorRT vs ONNX Runtime fp32", ["output", "batch", "max abs diff", "cosine", "top-1 agreement"], rows)
    typer.echo(str(artifact.path))


def main() -> None:
    app(prog_name="vitexport")


if __name__ == "__main__":
    sys.exit(main())
