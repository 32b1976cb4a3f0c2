"""What `vitexport k8s` is asked for, checked: `K8sSettings` (a bad value is one line before anything is written) and
the Kubernetes names of served models."""

from __future__ import annotations

import re
from dataclasses import dataclass

import vitexport
from vitexport.errors import KubernetesError

DEFAULT_IMAGE = f"vitexport-triton:{vitexport.__version__}"
STORAGE_SCHEMES = ("s3", "gs", "pvc")

# Kubernetes names: DNS-1123 labels. An InferenceService's name also starts a Service name (`<name>-predictor`,
# at most 63 characters) and must start with a letter (KServe's rule).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_ISVC_NAME = 63 - len("-predictor")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)([eE][-+]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?", re.IGNORECASE)


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
