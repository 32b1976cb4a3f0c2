"""`vitexport k8s`: a Triton model repository as a kustomize folder for KServe, with its serving image's Dockerfile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitexport.cli.console import JsonFlag, print_json, print_table, user_errors

if TYPE_CHECKING:
    from vitexport.serving.kubernetes import K8sSettings, Manifests

# The options, named once here so that the command's signature reads as a list.
Repo = Annotated[Path, typer.Argument(metavar="REPO", help="The Triton model repository to deploy.")]
Output = Annotated[Path, typer.Option(help="Folder to write (kubectl apply -k FOLDER).")]
Name = Annotated[
    list[str] | None, typer.Option(help="Only this served model (a Triton name; repeatable). Default: all.")
]
Image = Annotated[str | None, typer.Option(help="Serving image the manifests run (default: vitexport-triton:VERSION).")]
StorageUri = Annotated[
    str,
    typer.Option(
        help="Where the cluster finds the repository: s3://BUCKET/PATH, gs://BUCKET/PATH, pvc://CLAIM/PATH "
        "(or KServe's https://, hdfs://, webhdfs://, oci://)."
    ),
]
MinReplicas = Annotated[int, typer.Option(help="Fewest replicas per served model.")]
MaxReplicas = Annotated[int, typer.Option(help="Most replicas per served model (CPU autoscaling).")]
Gpu = Annotated[bool, typer.Option(help="Serve the GPU models (TensorRT, ONNX Runtime GPU), one nvidia.com/gpu each.")]
Cpu = Annotated[str, typer.Option(help="CPU per replica (request = limit).")]
Memory = Annotated[str, typer.Option(help="Memory per replica (request = limit).")]
Namespace = Annotated[str | None, typer.Option(help="Namespace (written as a Namespace and kustomize's namespace).")]
ClusterRuntime = Annotated[bool, typer.Option(help="A ClusterServingRuntime instead of a namespaced one.")]


def k8s(
    repo_dir: Repo = Path("model_repository"),
    output: Output = Path("k8s"),
    name: Name = None,
    image: Image = None,
    storage_uri: StorageUri = "pvc://vitexport-models",
    min_replicas: MinReplicas = 1,
    max_replicas: MaxReplicas = 4,
    gpu: Gpu = False,
    cpu: Cpu = "2",
    memory: Memory = "2Gi",
    namespace: Namespace = None,
    cluster_runtime: ClusterRuntime = False,
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
        print_json(_summary(result, settings, output))
        return
    rows = [
        [s.k8s_name, ", ".join(s.models), f"{settings.min_replicas}..{settings.max_replicas}"] for s in result.served
    ]
    rows += [[name, f"skipped: {why}", ""] for name, why in result.skipped.items()]
    print_table(f"InferenceServices in {output}", ["name", "Triton models", "replicas"], rows)
    typer.echo(f"image: docker build -t {settings.image} {output / kubernetes.IMAGE_DIR}")
    typer.echo(f"repository: upload {repo_dir} to {settings.storage_uri}, then: kubectl apply -k {output}")


def _summary(result: Manifests, settings: K8sSettings, output: Path) -> dict[str, Any]:
    """What --json prints: the files written, the served models and where the image and repository go."""
    return {
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
