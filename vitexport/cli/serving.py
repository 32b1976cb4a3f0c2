"""The serving commands: `repo` writes a Triton model repository, `serve` runs Triton on it, `infer` asks it."""

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
from vitexport.errors import VitExportError
from vitexport.serving.client import Protocol, Send
from vitexport.serving.config import ServingBackend
from vitexport.serving.supervisor import RestartPolicy

# `repo`'s options, named once (the command's signature stays readable and under the length rule).
Sources = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL_OR_ONNX...",
        help="A registered model (exported to ONNX first) or artifact files: ONNX, OpenVINO IR, or TensorRT "
        "engines (several: one per GPU compute capability). Several CPU variants of one model: the fastest "
        "that passed its accuracy gate is served, timed here.",
    ),
]
BackendOption = Annotated[
    ServingBackend | None,
    typer.Option(
        help="python-onnxruntime, python-openvino, onnxruntime, openvino or tensorrt "
        "(default: by artifact: ONNX python-onnxruntime, OpenVINO IR python-openvino, engine tensorrt)."
    ),
]
MaxBatch = Annotated[int | None, typer.Option(help="Batch limit (default: 8; engines: profile max).")]
PreferredBatch = Annotated[list[int] | None, typer.Option(help="Preferred batch size (repeatable).")]
QueueDelay = Annotated[int, typer.Option(help="Longest wait to fill a batch, in microseconds.")]
Instances = Annotated[int, typer.Option(help="Model instances (one Python stub process each).")]
VersionOption = Annotated[int | None, typer.Option(help="Version number (default: next free).")]
EnsembleFlag = Annotated[
    bool, typer.Option(help="Also write the NAME_image ensemble (image bytes -> classes, or -> the embedding).")
]
RepoTopK = Annotated[
    int | None, typer.Option(help="Classes clients ask by default (5); detectors: boxes at most (100).")
]
SendOption = Annotated[
    Send, typer.Option(help="resized: a large photo made smaller first, where the model's gate allows; original.")
]
Threshold = Annotated[float | None, typer.Option(help="Detectors: default score threshold (0.5).")]
OrtTrtFp16 = Annotated[bool, typer.Option(help="onnxruntime backend: TensorRT FP16 accelerator.")]


def repo(
    sources: Sources,
    repo_dir: RepoDir = Path("model_repository"),
    name: ModelName = None,
    backend: BackendOption = None,
    max_batch_size: MaxBatch = None,
    preferred_batch_size: PreferredBatch = None,
    queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    version: VersionOption = None,
    ensemble: EnsembleFlag = True,
    top_k: RepoTopK = None,
    threshold: Threshold = None,
    ort_trt_fp16: OrtTrtFp16 = False,
    preprocess: PreprocessOption = "fast",
    as_json: JsonFlag = False,
) -> None:
    """Write a model into a Triton model repository: config.pbtxt, labels, a new version, and the image ensemble."""
    import tempfile

    with user_errors(), tempfile.TemporaryDirectory(prefix="vitexport-repo-") as tmp:
        from vitexport.export.onnx import export_or_load
        from vitexport.pipeline import choose_preprocessing, select_for_serving
        from vitexport.serving.config import Batching, batching_from_options
        from vitexport.serving.repository import add_model, scan
        from vitexport.serving.server import unavailable_reason

        with progress_status(not as_json) as progress:
            artifacts = [export_or_load(source, Path(tmp), progress=progress) for source in sources]
            batch = max_batch_size or Batching.max_batch_size
            selection = select_for_serving(artifacts, batch=batch, progress=progress)
            chosen = selection.artifacts[0]
            preprocessing, why = choose_preprocessing(chosen, preprocess if ensemble else "exact", progress=progress)
        timings = selection.timings
        added = add_model(
            repo_dir,
            list(selection.artifacts),
            backend=backend,
            name=name,
            batching=batching_from_options(max_batch_size, tuple(preferred_batch_size or ()), queue_delay_us),
            instances=instances,
            version=version,
            ensemble=ensemble,
            top_k=top_k,
            threshold=threshold,
            tensorrt_accelerator=ort_trt_fp16,
            preprocessing=preprocessing,
        )
        if why:  # once the repository is written: a write that fails is the one line then
            typer.secho(f"note: {why}", fg="yellow", err=True)
        configs = scan(repo_dir)
        notes = {m: unavailable_reason(m, configs) for m in added.models}
    _render_repo(repo_dir, added, notes, timings, as_json)


def _render_repo(repo_dir: Path, added: Any, notes: dict[str, str | None], timings: Any, as_json: bool) -> None:
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


# serve's newer options, named here to keep its signature short.
ResponseCacheOption = Annotated[
    int,
    typer.Option(
        "--response-cache",
        metavar="MB",
        help="Triton's response cache of MB megabytes: a repeated image skips decoding and the model.",
    ),
]
TritonFlags = Annotated[
    list[str] | None,
    typer.Argument(metavar="[-- TRITONSERVER FLAGS]", help="More tritonserver flags, after --.", show_default=False),
]


def serve(
    repo_dir: RepoDir = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: any free port).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: any free port).")] = 8002,
    models: Annotated[list[str] | None, typer.Option("--models", help="Only these models (repeatable).")] = None,
    allow_model_control: Annotated[
        bool,
        typer.Option(
            "--allow-model-control",
            help="Open Triton's load/unload/index APIs, behind a key printed at start [default: closed].",
        ),
    ] = False,
    restart: Annotated[
        RestartPolicy,
        typer.Option(help="on-failure: start Triton again when it or a model's backend dies (back-off 1-30 s)."),
    ] = RestartPolicy.no,
    max_restarts: Annotated[int, typer.Option(help="Restarts allowed in 10 minutes before giving up.", min=0)] = 5,
    response_cache: ResponseCacheOption = 0,
    triton_args: TritonFlags = None,
) -> None:
    """Start Triton on a model repository until Ctrl-C or SIGTERM; models it cannot run here are skipped. Nobody can
    load, unload or replace models through the server unless --allow-model-control is given. Flags after -- go to
    tritonserver, but for those that would undo this (model control, restricted APIs, addresses, repository)."""
    import signal

    def terminate(signum, frame):  # SIGTERM and SIGHUP (terminal closed) take the same orderly way out as Ctrl-C
        raise KeyboardInterrupt

    with user_errors():
        from vitexport.serving.server import TritonServer
        from vitexport.serving.supervisor import Restart, supervise

        names = [n for item in models or [] for n in item.split(",") if n]
        server = TritonServer(
            repo_dir,
            host=host,
            http_port=http_port or None,
            grpc_port=grpc_port or None,
            metrics_port=metrics_port or None,
            models=names or None,
            model_control=allow_model_control,
            extra_args=triton_args or (),
            response_cache_mb=response_cache,
        )
        for model, reason in server.skipped.items():
            typer.secho(f"note: not loading {model}: {reason}", fg="yellow", err=True)
        previous = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            with server:
                _announce(server)
                # Triton or a model's backend dead: one line saying why; restarted, or Triton stopped and exit 1.
                supervise(server, Restart(restart, max_restarts), lambda line: typer.secho(line, fg="yellow", err=True))
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _announce(server) -> None:
    """What `serve` prints once Triton is ready: where, what, and the control key if model control is on."""
    if server.run_as_root:  # we are root and Triton's user could not read all it needs
        typer.secho(f"warning: Triton runs as root: {server.run_as_root}", fg="yellow", err=True)
    e = server.endpoints
    typer.echo(f"HTTP    {e.http}\ngRPC    {e.grpc}\nmetrics {e.metrics}")
    typer.echo(f"models  {', '.join(server.models) or 'none'}")
    if server.control_key:
        from vitexport.serving.server import CONTROL_HEADER

        # Printed, never stored: whoever started the server holds it (a load can run code).
        header = f"{CONTROL_HEADER}: {server.control_key}"
        typer.echo(f"control /v2/repository requests need the header '{header}'")
    typer.echo("ready (Ctrl-C to stop)")


def infer(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    url: Annotated[str | None, typer.Option(help="Server (default: localhost:8000 (http), :8001 (grpc)).")] = None,
    protocol: Annotated[Protocol, typer.Option(help="http or grpc.")] = Protocol.http,
    model: Annotated[str | None, typer.Option(help="Served model (default: the one NAME_image ensemble).")] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Classes per image; detectors: at most this many boxes (default: the repository's)."),
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Detectors: lowest score shown.")] = None,
    draw: Annotated[
        Path | None, typer.Option(help="Detectors: write the image with its boxes and labels drawn (one image).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server at each step.")] = 60.0,
    send: SendOption = Send.resized,
    as_json: JsonFlag = False,
) -> None:
    """Classify images on a running Triton server and print labels and scores; for a model exported with
    --head features, print each embedding's size and L2 norm (--json: the whole vector); for a detector (DETR),
    print its boxes in the image's pixels (--draw: the picture with them)."""
    with user_errors():
        from vitexport.serving.client import TopK, predict

        if draw is not None and len(images) != 1:
            raise VitExportError(f"--draw writes one picture: give one image, not {len(images)}")
        server = url or protocol.default_url
        results = predict(
            server, images, protocol=protocol, model=model, top_k=top_k, threshold=threshold, timeout=timeout, send=send
        )
        detector = isinstance(results[0], list)
        if draw is not None and not detector:
            raise VitExportError("--draw is for detectors; this model answers classes or embeddings")
        if detector:
            from vitexport.cli.render import detections_json, detections_table, draw_detections

            if draw is not None:
                draw_detections(images[0], results[0], draw)
            if as_json:
                print_json(detections_json(images, results))
            else:
                detections_table(images, results)
            return
    if not isinstance(results[0], TopK):  # a model exported with --head features: one embedding per image
        from vitexport.cli.render import embedding_summary, embeddings_table

        if as_json:
            print_json([{"image": str(p)} | embedding_summary(v) for p, v in zip(images, results, strict=True)])
        else:
            embeddings_table(images, results)
        return
    if as_json:
        print_json([{"image": str(path)} | r.to_dict() for path, r in zip(images, results, strict=True)])
        return
    rows = [
        [str(path) if rank == 0 else "", rank + 1, label, f"{score:.4f}"]
        for path, r in zip(images, results, strict=True)
        for rank, (label, score) in enumerate(zip(r.labels, r.scores, strict=True))
    ]
    print_table(None, ["image", "rank", "label", "score"], rows)
