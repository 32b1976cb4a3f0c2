"""vitexport: Vision Transformers from PyTorch to verified ONNX, optimized variants, TensorRT and Triton.

The Python API, `import vitexport as vx`:

    vx.list_models(), vx.get_spec(name)        registered models: names, sizes, preprocessing
    vx.create_model(name, num_classes=...)     a torch.nn.Module in eval mode
    vx.export_onnx(name, "m.onnx")             exported, checked, validated: a ModelArtifact, its sidecar beside it
    vx.import_onnx(path), vx.load_artifact(p)  an ONNX (or Optimum's folder) from elsewhere; an artifact from disk
    vx.optimize(artifact, runtime=, precision=, calibration=)   a variant, behind its accuracy gate
    vx.deploy(model_or_onnx, repo=)            every CPU candidate gated and timed, the fastest served: a Deployment
    vx.add_to_repository(repo, artifact)       a model and its <name>_image ensemble in a Triton repository
    with vx.serve(repo) as server: ...         a real Triton server, ready, stopped on exit
    vx.Client(server.endpoints.http)           classify, embed, detect, ready_models
    vx.VitExportError                          every error a user can cause and fix

Names load on first use (PEP 562): `import vitexport` imports neither torch nor ONNX nor tritonclient, so the CLI's
`--help` stays instant; each name's own module imports what it needs when it is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the one place the version is written: pyproject.toml reads it (dynamic = ["version"])

# name -> the module that defines it, imported on first access.
_LAZY = {
    "create_model": "vitexport.models",
    "get_spec": "vitexport.models",
    "list_models": "vitexport.models",
    "export_onnx": "vitexport.pipeline",
    "import_onnx": "vitexport.export.onnx_import",
    "load_artifact": "vitexport.artifacts",
    "ModelArtifact": "vitexport.artifacts",
    "optimize": "vitexport.pipeline",
    "deploy": "vitexport.pipeline",
    "Deployment": "vitexport.pipeline",
    "add_to_repository": "vitexport.pipeline",
    "serve": "vitexport.pipeline",
    "Client": "vitexport.serving.remote",
    "VitExportError": "vitexport.errors",
}

# Spelled out, not computed from _LAZY: type checkers and linters read __all__ statically (a test checks they agree).
__all__ = [
    "Client",
    "Deployment",
    "ModelArtifact",
    "VitExportError",
    "__version__",
    "add_to_repository",
    "create_model",
    "deploy",
    "export_onnx",
    "get_spec",
    "import_onnx",
    "list_models",
    "load_artifact",
    "optimize",
    "serve",
]

if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ imports these on first use
    from vitexport.artifacts import ModelArtifact, load_artifact
    from vitexport.errors import VitExportError
    from vitexport.export.onnx_import import import_onnx
    from vitexport.models import create_model, get_spec, list_models
    from vitexport.pipeline import Deployment, add_to_repository, deploy, export_onnx, optimize, serve
    from vitexport.serving.remote import Client


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vitexport' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
