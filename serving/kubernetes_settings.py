"""What `vitexport k8s` is asked for, checked: `K8sSettings` (a bad value is one line before anything is written) and
the Kubernetes names of served models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, localcontext

import vitexport
from vitexport.errors import KubernetesError

DEFAULT_IMAGE = f"vitexport-triton:{vitexport.__version__}"
# The schemes KServe's storage initializer downloads (or, pvc://, mounts) a model from.
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "hdfs", "webhdfs", "oci")
# Characters a shell gives a meaning to. The manifests quote the URI, so they are inert there, but no storage URI
# needs them, and a URI holding them has been pasted from somewhere wrong. `?`, `&` and `=` are allowed in an https
# URI's query string (a signed URL's), nowhere else.
_SHELL = set("$`;|&<>(){}\\\"'!*?#")

# Kubernetes names: DNS-1123 labels. An InferenceService's name also starts a Service name (`<name>-predictor`,
# at most 63 characters) and must start with a letter (KServe's rule).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_ISVC_NAME = 63 - len("-predictor")
# Kubernetes' resource.Quantity: a signed number (`2`, `2.`, `.5`, `1.5`) and one suffix: binary Ki..Ei, decimal
# n, u, m, k, M, G, T, P, E, or a decimal exponent e/E with a signed integer that fits in 32 bits.
_QUANTITY = re.compile(r"([+-]?)(\d+\.?\d*|\.\d+)(?:([eE])([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)")
_SUFFIX = {f"{p}i": Decimal(2) ** (10 * (i + 1)) for i, p in enumerate("KMGTPE")} | {
    s: Decimal(10) ** e for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
}
# Kubernetes keeps a quantity's milli-units (a CPU's millicores) in an int64; it caps anything above at 2^63 - 1
# units, silently. So the largest value that means what it says, in units:
MAX_QUANTITY = Decimal(2**63 - 1) / 1000
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
        check_quantity("--cpu", self.cpu)
        check_quantity("--memory", self.memory)
        if not _IMAGE.fullmatch(self.image):
            raise KubernetesError(f"--image {self.image!r} is not an image reference (registry/name:tag)")
        if self.namespace is not None and not (len(self.namespace) <= 63 and _DNS_LABEL.fullmatch(self.namespace)):
            raise KubernetesError(
                f"--namespace {self.namespace!r} is not a Kubernetes name: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )


def check_quantity(what: str, value: str) -> Decimal:
    """The value of a Kubernetes quantity (`2`, `500m`, `4Gi`, `1e3`), refused in one line unless it is positive,
    written as resource.Quantity parses it, and small enough that Kubernetes keeps it as written."""
    quantity = _QUANTITY.fullmatch(value)
    if quantity is None:
        raise KubernetesError(f"{what} must be a positive Kubernetes quantity (2, 500m, 4Gi), got {value!r}")
    sign, number, exponent_mark, exponent, suffix = quantity.groups()
    if exponent_mark and not -(2**31) <= int(exponent) < 2**31:  # Kubernetes parses the exponent as an int32
        raise KubernetesError(f"{what} {value!r}: the exponent {exponent} is out of Kubernetes' range")
    with localcontext() as context:
        context.prec = 60  # exact for every suffix and any digits a user types; scaleb below keeps the exponent
        amount = Decimal(f"{sign}{number}").scaleb(int(exponent)) if exponent_mark else Decimal(f"{sign}{number}")
        amount *= _SUFFIX.get(suffix or "", Decimal(1))
    if amount <= 0:
        raise KubernetesError(f"{what} must be a positive Kubernetes quantity (2, 500m, 4Gi), got {value!r}")
    if amount > MAX_QUANTITY:
        raise KubernetesError(
            f"{what} {value!r} is over Kubernetes' largest quantity, {MAX_QUANTITY} (2^63 - 1 milli-units)"
        )
    return amount


def check_storage_uri(uri: str) -> None:
    """Refuse in one line a storage URI KServe's storage initializer would not take, or one that is not what the user
    meant: a scheme it reads, a bucket (or claim, host, registry), no control characters or whitespace, no `..`
    path segments, no shell metacharacters."""
    bad = next((c for c in uri if c.isspace() or not c.isprintable() or not c.isascii()), None)
    if bad is not None:
        raise KubernetesError(
            f"--storage-uri holds {bad!r} at {uri.index(bad)}: a URI is printable ASCII, no whitespace"
        )
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        raise KubernetesError(f"--storage-uri must start with one of {schemes} (KServe's), got {uri!r}")
    path, _, query = rest.partition("?") if scheme == "https" else (rest, "", "")
    shell = next((c for c in path + query.replace("&", "").replace("=", "") if c in _SHELL), None)
    if shell is not None:
        raise KubernetesError(f"--storage-uri {uri!r} holds {shell!r}, a shell metacharacter: no storage URI needs one")
    bucket, *segments = path.split("/")
    if any(s.lower() in ("..", "%2e%2e", ".%2e", "%2e.") for s in segments):
        raise KubernetesError(f"--storage-uri {uri!r} has a '..' segment: give the repository's own path")
    if not bucket:
        what = {"pvc": "claim", "https": "host", "oci": "registry"}.get(scheme, "bucket")
        raise KubernetesError(f"--storage-uri {uri!r} names no {what}")
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
