"""`vitexport bench`: ours against the peers, in-process and served, in one run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vitexport.cli.console import JsonFlag, int_list, print_json, progress_status, user_errors

# The options, named once here so that the command's signature reads as a list.
Models = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL...",
        help="Registered models (deit_small resnet50) or fp32 ONNX artifacts (a `vitexport import`ed file).",
    ),
]
Backends = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated backends [default: all; --quick: torch,onnxruntime-plain]. Peers: torch, "
        "torch-compile, timm, onnxruntime-plain, openvino-plain; ours: onnxruntime, onnxruntime-int8, "
        "openvino-bf16, openvino-int8, tensorrt, triton-grpc, triton-http, triton-image (photographs to the image "
        "ensemble beside tensors)."
    ),
]
BatchSizes = Annotated[str | None, typer.Option(help="In-process batch sizes [default: 1,8,32; --quick 1,8].")]
Concurrency = Annotated[str | None, typer.Option(help="Served concurrencies [default: 1,4,8; --quick 1,4].")]
Threads = Annotated[int, typer.Option(help="Intra-op threads of every runtime.")]
Duration = Annotated[
    float | None,
    typer.Option(help="Seconds per measured window, in-process and served [default: 2; --quick 0.4 and 0.5]."),
]
Windows = Annotated[int | None, typer.Option(help="Measured windows per point [default: 3].")]
Quick = Annotated[bool, typer.Option(help="A short run (under 3 minutes for four models on 2 cores).")]
Output = Annotated[
    Path, typer.Option("--output", "-o", help="Folder for bench.json/.md/_*.png (--quick: bench-quick.*).")
]
Workdir = Annotated[
    Path | None,
    typer.Option(help="Artifacts cache (exports, variants) and worker logs [default: ~/.cache/vitexport/bench]."),
]
TritonUrl = Annotated[
    str | None,
    typer.Option(help="HOST:HTTP_PORT:GRPC_PORT of a running Triton serving each MODEL [default: start one]."),
]
Gemm = Annotated[bool, typer.Option(help="Measure the GEMM peaks (fraction-of-peak columns need them).")]
Repo = Annotated[
    Path | None,
    typer.Option(
        help="A repository `vitexport deploy` wrote: each MODEL's deployed variant is measured as it is (its row, and "
        "served) [default with --quick: model_repository, where it exists]."
    ),
]
GemmSizes = Annotated[
    str | None, typer.Option(help="Sides of the GEMM peaks' matmuls [default: 1024,2048; --quick 512,1024].")
]
Photos = Annotated[
    str | None,
    typer.Option(
        help="The image path's photographs, WIDTHxHEIGHT.jpg|png [default: 640x480, 1600x1200, 4032x3024 as JPEG "
        "and PNG; --quick 640x480.jpg,4032x3024.jpg]. Measured with the triton-image backend."
    ),
]
Preprocess = Annotated[
    str | None, typer.Option(help="The image path's preprocessing mode, as the repository step takes it.")
]


def bench(
    models: Models,
    backends: Backends = None,
    batch_sizes: BatchSizes = None,
    concurrency: Concurrency = None,
    threads: Threads = 2,
    duration: Duration = None,
    windows: Windows = None,
    quick: Quick = False,
    output: Output = Path("benchmarks/results"),
    workdir: Workdir = None,
    triton_url: TritonUrl = None,
    gemm: Gemm = True,
    gemm_sizes: GemmSizes = None,
    repo: Repo = None,
    photos: Photos = None,
    preprocess: Preprocess = None,
    as_json: JsonFlag = False,
) -> None:
    """Benchmark models in-process (ours against the peers, side by side) and served through Triton: JSON, Markdown
    and PNG plots in --output."""
    with user_errors():
        from vitexport.bench.bench import BenchConfig, run
        from vitexport.bench.image_path import parse_photos
        from vitexport.bench.report import write
        from vitexport.bench.runners import BenchBackend
        from vitexport.fileio import writable_folder

        config = BenchConfig.from_options(
            tuple(models),
            quick=quick,
            backends=BenchBackend.parse_list(backends) if backends is not None else None,
            batch_sizes=int_list("--batch-sizes", batch_sizes),
            concurrency=int_list("--concurrency", concurrency),
            threads=threads,
            duration=duration,
            windows=windows,
            workdir=workdir,
            triton_url=triton_url,
            gemm=gemm,
            gemm_sizes=int_list("--gemm-sizes", gemm_sizes),
            repo=repo,
            photos=parse_photos(photos) if photos is not None else None,
            preprocess=preprocess,
            command="vitexport bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "",
        )
        writable_folder(output, "the results")
        writable_folder(config.workdir, "the variants and logs")
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
