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

import ast
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vitexport
from vitexport.errors import KubernetesError
from vitexport.fileio import write_atomic
from vitexport.serving.repository import scan
from vitexport.serving.server import with_steps

# Triton 2.51 (the server of the nvidia-pytriton wheel `vitexport serve` runs) is NGC's container release 24.10.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_PYTHON = (3, 10)  # the container's python3 (Ubuntu 22.04), which runs the Python backend's stubs
DEFAULT_IMAGE = f"vitexport-triton:{vitexport.__version__}"
RUNTIME_NAME = "vitexport-triton"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 9000, 8002  # KServe's Triton runtime's ports; Triton's metrics port
MODEL_STORE = "/mnt/models"  # where KServe's storage initializer (or a PVC mount) puts storageUri
STORAGE_SCHEMES = ("s3", "gs", "pvc")
CONTROL_HEADER = "vitexport-control-key"
SCALE_TARGET = 75  # % of the CPU request at which the autoscaler adds a replica
IMAGE_DIR = "image"  # the serving image's build context inside the output folder
IMAGE_ROOT = "/opt/vitexport"  # where the image keeps vitexport's modules (on PYTHONPATH)
USER_ID = 1000  # the official Triton images' unprivileged user (triton-server)

# What the Python-backend models import inside the Triton container, pinned: the newest releases within pyproject's
# ranges that have wheels for the container's Python 3.10. pyproject's `serving-image` extra holds the same pins
# (tests/test_serving_kubernetes.py).
IMAGE_REQUIREMENTS = {"numpy": "1.26.4", "pillow": "12.3.0", "onnxruntime": "1.23.2", "openvino": "2026.4.1"}
# Import name -> distribution, for the third-party modules the backends import.
DISTRIBUTIONS = {"numpy": "numpy", "PIL": "pillow", "onnxruntime": "onnxruntime", "openvino": "openvino"}
PROVIDED = {"triton_python_backend_utils"}  # the Python backend's own module, in the container already

# Kubernetes names: DNS-1123 labels. An InferenceService's name also starts a Service name (`<name>-predictor`,
# at most 63 characters) and must start with a letter (KServe's rule).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_ISVC_NAME = 63 - len("-predictor")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)([eE][-+]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?", re.IGNORECASE)
# Triton's health endpoints (the v2 protocol's), its metrics, and the lock on its model-repository API.
LOCKED_START = (
    "key=`head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`; "
    f'exec tritonserver "--http-restricted-api=model-repository:{CONTROL_HEADER}=$key" '
    f'"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}=$key" "$@"'
)


@dataclass(frozen=True)
class K8sSettings:
    """What `vitexport k8s` writes. Checked here, so a bad value is one line before anything is written."""

    models: tuple[str, ...] = ()  # served models to write (their Triton names); empty: every one
    image: str = DEFAULT_IMAGE
    storage_uri: str = "pvc://vitexport-models"
    min_replicas: int = 1
    max_replicas: int = 4
    gpu: bool = False
    cpu: str = "2"
    memory: str = "2Gi"
    namespace: str | None = None
    cluster_runtime: bool = False  # a ClusterServingRuntime (one for the cluster) instead of a namespaced one

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise KubernetesError(f"--min-replicas must be 1 or more, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise KubernetesError(f"--max-replicas {self.max_replicas} is below --min-replicas {self.min_replicas}")
        check_storage_uri(self.storage_uri)
        for what, value in (("--cpu", self.cpu), ("--memory", self.memory)):
            quantity = _QUANTITY.fullmatch(value)
            if quantity is None or float(quantity[1]) <= 0:  # [1]: the number before the unit
                raise KubernetesError(f"{what} must be a positive Kubernetes quantity (2, 500m, 4Gi), got {value!r}")
        if not _IMAGE.fullmatch(self.image):
            raise KubernetesError(f"--image {self.image!r} is not an image reference (registry/name:tag)")
        if self.namespace is not None and not (len(self.namespace) <= 63 and _DNS_LABEL.fullmatch(self.namespace)):
            raise KubernetesError(
                f"--namespace {self.namespace!r} is not a Kubernetes name: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )


def check_storage_uri(uri: str) -> None:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        raise KubernetesError(f"--storage-uri must start with s3://, gs:// or pvc://, got {uri!r}")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise KubernetesError(f"--storage-uri {uri!r} names no {'claim' if scheme == 'pvc' else 'bucket'}")
    if scheme == "pvc" and not (len(bucket) <= 253 and _DNS_LABEL.fullmatch(bucket.replace(".", "-"))):
        raise KubernetesError(f"--storage-uri: {bucket!r} is not a PersistentVolumeClaim name")


def k8s_name(model: str) -> str:
    """The InferenceService name of a served model: its Triton name in lowercase, '_' and '.' as '-'; refused in one
    line when Kubernetes would refuse it."""
    name = model.lower().replace("_", "-").replace(".", "-")
    if len(name) > MAX_ISVC_NAME or not _ISVC_NAME.fullmatch(name):
        raise KubernetesError(
            f"model {model!r} cannot name a Kubernetes InferenceService ({name!r}): it must start with a letter, "
            f"end with a letter or digit and be at most {MAX_ISVC_NAME} characters; write it again with "
            "`vitexport repo --name`"
        )
    return name


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


def served_models(repo_dir: Path) -> list[ServedModel]:
    """The repository's served models: models joined by ensembles are one (an ensemble with its steps), named by
    the model whose `<name>_image` ensemble is among them, else by the entry point (a model no ensemble runs)."""
    configs = scan(repo_dir)
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
    everything = served_models(repo_dir)
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


# -- the serving image ----------------------------------------------------------------------------------------------


def backend_imports(backends_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """What the Python-backend models import at run time, transitively through vitexport's modules: (vitexport's
    modules, third-party import names). Function-level imports count (the runtime a config chooses); imports under
    `if TYPE_CHECKING:` do not; the standard library and Triton's own module need nothing."""
    from vitexport.serving.backends import BACKENDS_DIR

    root = Path(vitexport.__file__).parent
    backends_dir = backends_dir or BACKENDS_DIR
    ours: set[str] = set()
    third: set[str] = set()
    todo = [p for p in sorted(backends_dir.glob("*.py")) if p.name != "__init__.py"]
    while todo:
        for name in _imports(todo.pop().read_text()):
            top = name.split(".")[0]
            if top == "vitexport":
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # a package's __init__ runs before its modules
                    module = ".".join(parts[:i])
                    path = _module_path(root, module)
                    if path is not None and module not in ours:
                        ours.add(module)
                        todo.append(path)
            elif top not in sys.stdlib_module_names and top not in PROVIDED:
                third.add(top)
    return sorted(ours), sorted(third)


def _module_path(root: Path, module: str) -> Path | None:
    """The file of a vitexport module (a package's __init__.py), or None: a name imported from a module."""
    rel = Path(*module.split(".")[1:])
    for path in (root / rel / "__init__.py", root / f"{rel}.py"):
        if path.is_file():
            return path
    return None


def _imports(source: str) -> list[str]:
    names: list[str] = []
    skipped: set[int] = set()  # id() of the nodes under `if TYPE_CHECKING:`
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]  # `from vitexport.x import module`
    return names


def image_context() -> dict[str, str]:
    """The serving image's build folder: its Dockerfile and vitexport's modules the backends import."""
    ours, third = backend_imports()
    missing = [m for m in third if m not in DISTRIBUTIONS]
    if missing:
        raise KubernetesError(f"the Python-backend models import {', '.join(missing)}, which the image does not pin")
    root = Path(vitexport.__file__).parent
    files = {}
    for module in ours:
        path = _module_path(root, module)
        assert path is not None
        files[f"{IMAGE_DIR}/{path.relative_to(root.parent).as_posix()}"] = path.read_text()
    requirements = {DISTRIBUTIONS[m]: IMAGE_REQUIREMENTS[DISTRIBUTIONS[m]] for m in third}
    files[f"{IMAGE_DIR}/Dockerfile"] = dockerfile(requirements, sorted({Path(p).parts[1] for p in files}))
    return files


def dockerfile(requirements: dict[str, str], copied: list[str]) -> str:
    pins = " \\\n      ".join(f"{name}=={version}" for name, version in sorted(requirements.items()))
    copies = "\n".join(f"COPY {c} {IMAGE_ROOT}/{c}" for c in copied)
    return f"""\
# The serving image of `vitexport k8s`: the official Triton container of the release `vitexport serve` runs
# (Triton 2.51 = NGC 24.10) plus exactly what the repository's Python-backend models import: vitexport's modules
# below and their pinned runtime dependencies (pyproject.toml's serving-image extra). The models themselves are not
# in it: KServe puts the repository at {MODEL_STORE}. Build from this folder:
#   docker build -t REGISTRY/{DEFAULT_IMAGE.split(":")[0]}:TAG .
ARG TRITON_IMAGE={TRITON_IMAGE}
FROM ${{TRITON_IMAGE}}
USER root
RUN python3 -m pip --version >/dev/null 2>&1 || \\
    (apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*)
RUN python3 -m pip install --no-cache-dir \\
      {pins}
{copies}
RUN chmod -R a+rX {IMAGE_ROOT}
ENV PYTHONPATH={IMAGE_ROOT} \\
    PYTHONDONTWRITEBYTECODE=1
USER {USER_ID}:{USER_ID}
"""


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
