"""`vitexport deploy`: a model (or ONNX) to the fastest variant that passed its gate, written into the Triton
repository with its image ensemble, and with --serve, served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vitexport.cli.console import (
    JsonFlag,
    ModelName,
    PreprocessOption,
    RepoDir,
    print_json,
    print_table,
    progress_status,
    user_errors,
)

Runtimes = Annotated[
    str | None,
    typer.Option(
        help="Candidates, e.g. openvino-int8,onnxruntime-fp32 [default: OpenVINO INT8 and BF16, ORT INT8 and fp32]."
    ),
]


def deploy(
    model_or_onnx: Annotated[str, typer.Argument(help="A registered model (exported first) or an ONNX artifact.")],
    repo_dir: RepoDir = Path("model_repository"),
    name: ModelName = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Images INT8 calibrates on [default: real photographs from scikit-image].")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Images for the gates; class subfolders add accuracy.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights, when MODEL is a registered name.")] = None,
    runtimes: Runtimes = None,
    labels: Annotated[Path | None, typer.Option(help="Class names, one per line, served with the model.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where the candidates are kept [default: deploy/NAME].")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then run Triton on the repository until Ctrl-C.")] = False,
    http_port: Annotated[int, typer.Option(help="--serve: HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="--serve: gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="--serve: metrics port.")] = 8002,
    preprocess: PreprocessOption = "fast",
    as_json: JsonFlag = False,
) -> None:
    """Build every CPU candidate, gate each, time those that passed side by side here, and write the fastest into the
    repository with its image ensemble; print the candidates (img/s, drift, gate verdict, chosen)."""
    with user_errors():
        from vitexport import pipeline

        # Bad input ends here, before minutes of building: the candidates, the folders, the model's name.
        pipeline.check_deploy(model_or_onnx, calibration=calibration, images=images, runtimes=runtimes)
        calibration, images, note = pipeline.default_calibration(calibration, images)
        if note:  # said before the build, which takes minutes
            typer.secho(f"note: {note}", fg="yellow", err=True)
        with progress_status(not as_json) as progress:
            deployment = pipeline.deploy(
                model_or_onnx,
                repo=repo_dir,
                name=name,
                calibration=calibration,
                images=images,
                checkpoint=checkpoint,
                runtimes=runtimes,
                labels=labels,
                workdir=workdir,
                preprocess=preprocess,
                progress=progress,
            )
    _render(deployment, as_json)
    if serve:
        from vitexport.cli.serving import serve as serve_command

        serve_command(repo_dir=repo_dir, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)


def _render(deployment: Any, as_json: bool) -> None:
    """The candidates, fastest gated first, with the task's agreement figure; or the deployment as JSON."""
    for note in deployment.notes:
        typer.secho(f"note: {note}", fg="yellow", err=True)
    if as_json:
        print_json(deployment.to_dict())
    else:
        rows = [
            [
                c.name,
                "" if c.img_s is None else f"{c.img_s:.1f}",
                "" if c.cosine is None else f"{c.cosine:.5f}",
                "" if c.top1_agreement is None else f"{c.top1_agreement:.3f}",
                c.verdict,
                "yes" if c.chosen else "",
            ]
            for c in deployment.candidates
        ]
        from vitexport.tasks import task_of

        columns = ["candidate", "img/s", "worst cosine", task_of(deployment.source).agreement, "gate", "chosen"]
        print_table(f"{deployment.source.model}: candidates timed here, fastest gated first", columns, rows)
        typer.echo(str(deployment.added.path))
