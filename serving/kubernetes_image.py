"""The serving image of `vitexport k8s`: a build folder with a Dockerfile FROM the official Triton container plus
exactly what the Python-backend models import (vitexport's modules, found by reading the backends' imports, and their
pinned third-party packages)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import vitexport
from vitexport.errors import KubernetesError
from vitexport.serving.kubernetes_settings import DEFAULT_IMAGE

# Triton 2.51 (the server of the nvidia-pytriton wheel `vitexport serve` runs) is NGC's container release 24.10.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_PYTHON = (3, 10)  # the container's python3 (Ubuntu 22.04), which runs the Python backend's stubs
MODEL_STORE = "/mnt/models"  # where KServe's storage initializer (or a PVC mount) puts storageUri
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
# Modules a backend imports only for models `k8s` refuses (a torchvision-backend preprocessing: the image carries no
# torch), so the image needs neither them nor what they import.
REFUSED_ONLY = {"vitexport.preprocess.tv_backend"}


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
                    if module in REFUSED_ONLY:
                        break
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
    names = []
    skipped: set[int] = set()  # ids of the nodes under `if TYPE_CHECKING:`
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
