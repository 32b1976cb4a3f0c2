"""`vitexport deploy`: a model (or ONNX) to the fastest variant that passed its gate, written into the Triton
repository with its image ensemble, and with --serve, served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitexport.cli.console import JsonFlag, print_json, print_table, progress_status, user_errors
from vitexport.errors import VitExportError


def deploy(
    model_or_onnx: Annotated[str, typer.Argument(help="A registered model (exported first) or an ONNX artifact.")],
    repo_dir: Annotated[Path, typer.Option("--repo", help="Triton model repository.")] = Path("model_repository"),
    name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the model's).")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Images INT8 calibrates on [default: real photographs from scikit-image].")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Images for the gates; class subfolders add accuracy.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Weights, when MODEL is a registered name.")] = None,
    runtimes: Annotated[
        str | None,
        typer.Option(
            help="Candidates, e.g. openvino-int8,onnxruntime-fp32 [default: OpenVINO INT8 and BF16, ORT INT8 and fp32]."
        ),
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Class names, one per line, served with the model.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where the candidates are kept [default: deploy/NAME].")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then run Triton on the repository until Ctrl-C.")] = False,
    http_port: Annotated[int, typer.Option(help="--serve: HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="--serve: gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="--serve: metrics port.")] = 8002,
    as_json: JsonFlag = False,
) -> None:
    """Build every CPU candidate, gate each, time those that passed side by side here, and write the fastest into the
    repository with its image ensemble; print the candidates (img/s, drift, gate verdict, chosen)."""
    with user_errors():
        from vitexport.export.deploy import CANDIDATES, deploy_candidates, parse_candidates
        from vitexport.export.onnx import export_or_load, looks_like_a_file
        from vitexport.export.onnx_import import read_labels
        from vitexport.models import get_spec
        from vitexport.serving.repository import add_model

        # Bad input ends here, before minutes of building: the candidates, the folders, the model's name.
        chosen_names = parse_candidates(runtimes) if runtimes else CANDIDATES
        for flag, given in (("--calibration", calibration), ("--images", images)):
            if given is not None and not given.is_dir():
                raise VitExportError(f"{flag} {given} is not a folder of images")
        if not looks_like_a_file(model_or_onnx):
            get_spec(model_or_onnx)  # an unknown name: one line with suggestions
        if calibration is None:
            from vitexport.export.photos import deploy_photos

            calibration, gate = deploy_photos()
            images = images or gate
            typer.secho(
                f"note: no --calibration: calibrating on real photographs (scikit-image's {calibration.name}) and "
                f"gating on others ({images.name}); give your own images for your model",
                fg="yellow",
                err=True,
            )
        with progress_status(not as_json) as progress:
            # The export and the candidates go to one working folder, never into the current directory.
            folder = workdir or Path("deploy") / (name or Path(model_or_onnx).stem)
            folder.mkdir(parents=True, exist_ok=True)
            source = export_or_load(model_or_onnx, folder, checkpoint=checkpoint, progress=progress)
            candidates = deploy_candidates(
                source, folder, calibration=calibration, images=images, candidates=chosen_names, progress=progress
            )
        best = candidates[0].artifact
        if labels is not None:
            best = best.with_(labels=read_labels(labels, best.num_classes))
        added = add_model(repo_dir, best, name=name)
    if as_json:
        print_json({"candidates": [c.to_dict() for c in candidates], "path": str(added.path), "models": added.models})
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
            for c in candidates
        ]
        from vitexport.tasks import task_of

        columns = ["candidate", "img/s", "worst cosine", task_of(source).agreement, "gate", "chosen"]
        print_table(f"{source.model}: candidates timed here, fastest gated first", columns, rows)
        typer.echo(str(added.path))
    if serve:
        from vitexport.cli.serving import serve as serve_command

        serve_command(repo_dir=repo_dir, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
