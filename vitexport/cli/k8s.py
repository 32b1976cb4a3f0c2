"""`vitexport k8s`: a Triton model repository as a kustomize folder for KServe, with its serving image's Dockerfile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitexport.cli.console import JsonFlag, print_json, print_table, user_errors


def k8s(
    repo_dir: Annotated[Path, typer.Argument(metavar="REPO", help="The Triton model repository to deploy.")] = Path(
        "model_repository"
    ),
    output: Annotated[Path, typer.Option(help="Folder to write (kubectl apply -k FOLDER).")] = Path("k8s"),
    name: Annotated[
        list[str] | None, typer.Option(help="Only this served model (a Triton name; repeatable). Default: all.")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Serving image the manifests run (default: vitexport-triton:VERSION).")
    ] = None,
    storage_uri: Annotated[
        str,
        typer.Option(
            help="Where the cluster finds the repository: s3://BUCKET/PATH, gs://BUCKET/PATH, pvc://CLAIM/PATH."
        ),
    ] = "pvc://vitexport-models",
    min_replicas: Annotated[int, typer.Option(help="Fewest replicas per served model.")] = 1,
    max_replicas: Annotated[int, typer.Option(help="Most replicas per served model (CPU autoscaling).")] = 4,
    gpu: Annotated[
        bool, typer.Option(help="Serve the GPU models (TensorRT, ONNX Runtime GPU), one nvidia.com/gpu each.")
    ] = False,
    cpu: Annotated[str, typer.Option(help="CPU per replica (request = limit).")] = "2",
    memory: Annotated[str, typer.Option(help="Memory per replica (request = limit).")] = "2Gi",
    namespace: Annotated[
        str | None, typer.Option(help="Namespace (written as a Namespace and kustomize's namespace).")
    ] = None,
    cluster_runtime: Annotated[bool, typer.Option(help="A ClusterServingRuntime instead of a namespaced one.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write KServe manifests (a Triton ServingRuntime, one InferenceService per served model, a kustomization) and
    the serving image's Dockerfile for a model repository, to apply with `kubectl apply -k`."""
    with user_errors():
        from vitexport.serving import kubernetes

        settings = kubernetes.K8sSettings(
            models=tuple(name or ()),
            image=image or kubernetes.DEFAULT_IMAGE,
            storage_uri=storage_uri,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            namespace=namespace,
            cluster_runtime=cluster_runtime,
        )
        result = kubernetes.manifests(repo_dir, settings)
        kubernetes.write(result, output)
    if json_output:
        print_json(
            {
                "output": str(output),
                "files": sorted(result.files),
                "served": [
                    {"name": s.name, "inference_service": s.k8s_name, "models": list(s.models), "gpu": s.gpu}
                    for s in result.served
                ],
                "skipped": result.skipped,
                "image": settings.image,
                "storage_uri": settings.storage_uri,
            }
        )
        return
    rows = [
        [s.k8s_name, ", ".join(s.models), f"{settings.min_replicas}..{settings.max_replicas}"] for s in result.served
    ]
    rows += [[name, f"skipped: {why}", ""] for name, why in result.skipped.items()]
    print_table(f"InferenceServices in {output}", ["name", "Triton models", "replicas"], rows)
    typer.echo(f"image: docker build -t {settings.image} {output / kubernetes.IMAGE_DIR}")
    typer.echo(f"repository: upload {repo_dir} to {settings.storage_uri}, then: kubectl apply -k {output}")
