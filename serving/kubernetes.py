"""Kubernetes manifests for a Triton model repository: a KServe ServingRuntime running Triton with the Python backend
environment our models need, one InferenceService per served model, a kustomization, and the serving image's build
folder (a Dockerfile FROM the official Triton container plus exactly what the Python-backend models import).

`manifests(repo_dir, K8sSettings) -> Manifests` decides everything and returns the files as data; `write(manifests,
folder)` writes them. The repository is read, never changed: the manifests point at the very folder served locally,
uploaded as it is (S3, GCS or a PVC), so the cluster's Triton reads the same config.pbtxt files.

A served model is a model a client calls with its ensemble's steps (`deit_small` with `deit_small_image`,
`_preprocess` and `_postprocess`): each gets an InferenceService whose Triton loads only those models (explicit model
control, `--load-model`), with the model-repository API locked behind a key made at each start and kept by nobody,
as `vitexport serve` keeps it closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitexport.errors import KubernetesError
from vitexport.fileio import write_atomic
from vitexport.serving.install import with_steps
from vitexport.serving.kubernetes_image import IMAGE_DIR, MODEL_STORE, USER_ID, image_context
from vitexport.serving.kubernetes_settings import DEFAULT_IMAGE, K8sSettings, k8s_name
from vitexport.serving.repository import scan

# What `vitexport k8s` takes from here; the image's build folder is kubernetes_image.py's, the settings' checks
# kubernetes_settings.py's.
__all__ = ["DEFAULT_IMAGE", "IMAGE_DIR", "K8sSettings", "Manifests", "ServedModel", "manifests", "write"]

RUNTIME_NAME = "vitexport-triton"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 9000, 8002  # KServe's Triton runtime's ports; Triton's metrics port
CONTROL_HEADER = "vitexport-control-key"
SCALE_TARGET = 75  # % of the CPU request at which the autoscaler adds a replica
# Triton's health endpoints (the v2 protocol's), its metrics, and the lock on its model-repository API.
LOCKED_START = (
    "key=`head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`; "
    f'exec tritonserver "--http-restricted-api=model-repository:{CONTROL_HEADER}=$key" '
    f'"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}=$key" "$@"'
)


@dataclass(frozen=True)
class ServedModel:
    name: str  # the model a client calls (the classifier, whose `<name>_image` ensemble comes with it)
    k8s_name: str
    models: tuple[str, ...]  # every Triton model its server loads: the entry points and their ensembles' steps
    gpu: bool  # holds a model that runs on a GPU (a TensorRT engine, ONNX Runtime's GPU backend)
    configs_sha256: str = ""  # of its models' config.pbtxt files (configs_sha256)


@dataclass(frozen=True)
class Manifests:
    files: dict[str, Any]  # relative path -> a Kubernetes object (dict) or a list of them (YAML), or text
    served: tuple[ServedModel, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # served model -> why it is not written


def _check_image_serves(configs: dict[str, Any], served: tuple[ServedModel, ...]) -> None:
    """One line for a model the serving image cannot run: a preprocessing on transformers' torchvision backend needs
    torch and torchvision, which the image does not carry (1 GB, for one resize). `configs`: the repository's, by
    name (`scan`)."""
    import json

    from vitexport.serving import config as cfg

    for s in served:
        for name in s.models:
            raw = cfg.parameter(configs[name], "preprocess")
            if raw is not None and json.loads(raw).get("resize_backend") == "torchvision":
                raise KubernetesError(
                    f"{name} preprocesses on torchvision (transformers' torchvision image processor), which the "
                    "serving image does not carry: import it with --hf-backend pil, or serve it with `vitexport serve`"
                )


def served_models(repo_dir: Path, configs: dict[str, Any] | None = None) -> list[ServedModel]:
    """The repository's served models: models joined by ensembles are one (an ensemble with its steps), named by
    the model whose `<name>_image` ensemble is among them, else by the entry point (a model no ensemble runs).
    `configs`: the repository's parsed configs when the caller has them (`scan`)."""
    configs = scan(repo_dir) if configs is None else configs
    if not configs:
        raise KubernetesError(f"{repo_dir} holds no model (no <model>/config.pbtxt); write one with `vitexport repo`")
    group = {m: {m} for m in configs}
    for name, config in configs.items():
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                if step.model_name not in configs:
                    raise KubernetesError(f"ensemble {name} runs {step.model_name}, which is not in {repo_dir}")
                joined = group[name] | group[step.model_name]
                for m in joined:
                    group[m] = joined
    steps = {s.model_name for c in configs.values() for s in c.ensemble_scheduling.step}
    out, seen = [], set()
    for members in (group[m] for m in configs):
        if id(members) in seen:
            continue
        seen.add(id(members))
        named = sorted(m for m in members if f"{m}_image" in members)
        name = named[0] if named else sorted(m for m in members if m not in steps)[0]
        entries = sorted(m for m in members if m not in steps) + [name] * (name in steps)
        models = tuple(with_steps(sorted(set(entries)), configs))
        gpu = any(g.kind == g.KIND_GPU for m in models for g in configs[m].instance_group)
        out.append(ServedModel(name, k8s_name(name), models, gpu, configs_sha256(repo_dir, models)))
    names = [s.k8s_name for s in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise KubernetesError(f"models of {repo_dir} share the Kubernetes name {clash[0]}; rename one with --name")
    return sorted(out, key=lambda s: s.name)


def configs_sha256(repo_dir: Path, models: tuple[str, ...] | list[str]) -> str:
    """One hash of the models' config.pbtxt files (name and bytes, by name): the same on the uploaded copy."""
    digest = hashlib.sha256()
    for model in sorted(models):
        digest.update(f"{model}\0".encode() + (Path(repo_dir) / model / "config.pbtxt").read_bytes() + b"\0")
    return digest.hexdigest()


def manifests(repo_dir: str | Path, settings: K8sSettings) -> Manifests:
    repo_dir = Path(repo_dir)
    configs = scan(repo_dir)
    everything = served_models(repo_dir, configs)
    by_name = {s.name: s for s in everything}
    for s in everything:
        for m in s.models:
            by_name.setdefault(m, s)
    unknown = [m for m in settings.models if m not in by_name]
    if unknown:
        raise KubernetesError(
            f"not in {repo_dir}: {', '.join(unknown)} (it serves {', '.join(s.name for s in everything)})"
        )
    chosen = list(dict.fromkeys(by_name[m] for m in settings.models)) if settings.models else everything
    kind = "GPU" if settings.gpu else "CPU"
    wrong = [s for s in chosen if s.gpu != settings.gpu]
    if settings.models and wrong:
        raise KubernetesError(
            f"{wrong[0].name} is {'not ' if settings.gpu else ''}a GPU model (TensorRT engine or ONNX Runtime GPU "
            f"backend); {'drop --gpu' if settings.gpu else 'add --gpu'}"
        )
    skipped = {s.name: f"not a {kind} model ({'drop' if s.gpu else 'add'} --gpu)" for s in wrong}
    served = tuple(s for s in chosen if s.gpu == settings.gpu)
    if not served:
        raise KubernetesError(
            f"{repo_dir} holds no {kind} model to serve"
            + (
                ": write a TensorRT engine or an onnxruntime-backend model with `vitexport repo`"
                if settings.gpu
                else ""
            )
        )
    _check_image_serves(configs, served)
    files: dict[str, Any] = {"servingruntime.yaml": serving_runtime(settings)}
    for s in served:
        files[f"inferenceservice-{s.k8s_name}.yaml"] = inference_service(s, settings)
    if settings.namespace:
        files["namespace.yaml"] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": settings.namespace}}
    files["kustomization.yaml"] = kustomization(files, settings)
    files.update(image_context())
    return Manifests(files, served, skipped)


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "vitexport", "app.kubernetes.io/component": component}


def serving_runtime(settings: K8sSettings) -> dict:
    """Triton 2.51 in our serving image: v2 protocol over HTTP and gRPC, metrics for Prometheus, health probes,
    non-root, the Python backend's shared memory in RAM, explicit model control behind a lock."""
    probe = {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "kserve-container",
        "image": settings.image,
        "command": ["/bin/sh", "-c", LOCKED_START, "tritonserver"],
        "args": [
            f"--model-repository={MODEL_STORE}",
            "--model-control-mode=explicit",  # each InferenceService names its models with --load-model
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--allow-http=true",
            "--allow-grpc=true",
            "--allow-metrics=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": probe | {"failureThreshold": 120},  # loading may take minutes: 10 before liveness counts
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 10},
        "securityContext": {
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        # The Python backend passes tensors through /dev/shm, which is 64 MB in a container unless mounted.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "resources": _resources(settings),
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime" if settings.cluster_runtime else "ServingRuntime",
        "metadata": {
            "name": RUNTIME_NAME,
            "labels": _labels("runtime"),
            "annotations": {"serving.kserve.io/server-type": "tritonserver"},
        },
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [container],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
        },
    }


def _resources(settings: K8sSettings) -> dict:
    """Requests equal to limits (a Guaranteed pod: with whole CPUs, exclusive cores under the static CPU manager)."""
    amounts: dict[str, str] = {"cpu": settings.cpu, "memory": settings.memory}
    if settings.gpu:
        amounts["nvidia.com/gpu"] = "1"
    return {"requests": dict(amounts), "limits": dict(amounts)}


def inference_service(served: ServedModel, settings: K8sSettings) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": served.k8s_name,
            "labels": _labels("model"),
            "annotations": {
                # HTTP and gRPC both: a plain Deployment (Knative serves one port), scaled by the HPA on CPU.
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "serving.kserve.io/autoscalerClass": "hpa",
                "serving.kserve.io/enable-prometheus-scraping": "true",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
                "vitexport/triton-models": ",".join(served.models),
                # What the uploaded repository must hold: these models' config.pbtxt files, as written here.
                "vitexport/configs-sha256": served.configs_sha256,
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": settings.min_replicas,
                "maxReplicas": settings.max_replicas,
                "scaleMetric": "cpu",
                "scaleTarget": SCALE_TARGET,
                "model": {
                    "modelFormat": {"name": "triton", "version": "2"},
                    "runtime": RUNTIME_NAME,  # a ServingRuntime of the namespace, else the ClusterServingRuntime
                    "protocolVersion": "v2",
                    "storageUri": settings.storage_uri,
                    "args": [f"--load-model={m}" for m in served.models],
                    "resources": _resources(settings),
                },
            }
        },
    }


def kustomization(files: dict[str, Any], settings: K8sSettings) -> dict:
    image: dict[str, str] = {"name": settings.image}
    if "@" in settings.image:
        image["name"], image["digest"] = settings.image.split("@", 1)
    elif ":" in settings.image.split("/")[-1]:
        image["name"], image["newTag"] = settings.image.rsplit(":", 1)
    out: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(f for f in files if f.endswith(".yaml")),
        "labels": [{"pairs": {"app.kubernetes.io/managed-by": "vitexport"}}],
        "images": [image],  # `kustomize edit set image` retags the serving image in every manifest
    }
    if settings.namespace:
        out["namespace"] = settings.namespace
    return out


# -- writing ----------------------------------------------------------------------------------------------------------


def render_yaml(content: Any) -> str:
    import yaml

    docs = content if isinstance(content, list) else [content]

    class Plain(yaml.SafeDumper):
        # No &id001 anchors and *id001 aliases where two probes share one dict: valid YAML, but not what an operator
        # expects to read (or to patch) in a manifest.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return "---\n".join(yaml.dump(d, Dumper=Plain, sort_keys=False, default_flow_style=False, width=120) for d in docs)


def write(result: Manifests, folder: str | Path) -> list[Path]:
    """Write every file under `folder` (created; files of the same names replaced, others left alone)."""
    folder = Path(folder)
    written = []
    try:
        for rel, content in result.files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, content if isinstance(content, str) else render_yaml(content))
            written.append(path)
    except OSError as e:
        raise KubernetesError(f"cannot write {folder}: {e.strerror or e}") from None
    return written
