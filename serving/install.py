"""The Triton of the nvidia-pytriton wheel: where it keeps the server, the Python backend, the stubs and their
libraries; the backend folder and environment a server needs to run our repository; and which of the repository's
models it can load here (`unavailable_reason`) with what they bring along (`with_steps`)."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitexport.errors import ServingError
from vitexport.serving import config as cfg


@dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel keeps the server, the Python backend, the stubs and their libraries."""

    server: Path
    python_backend: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServingError("Triton is not installed: pip install 'vitexport[serve]' (nvidia-pytriton)")
        root = Path(spec.submodule_search_locations[0]) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            server=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (install.server, install.python_backend, install.stub, install.libs):
            if not path.exists():
                raise ServingError(f"the nvidia-pytriton install lacks {path} (Python {version} supported?)")
        return install

    def backend_dir(self, target: Path) -> None:
        """The Python backend's folder for `--backend-directory`: the stub must sit in it; symlinks keep it cheap."""
        target.mkdir(parents=True)
        for source in (
            self.python_backend / "libtriton_python.so",
            self.python_backend / "triton_python_backend_utils.py",
            self.stub,
        ):
            (target / source.name).symlink_to(source)

    def environment(self) -> dict[str, str]:
        """This process's environment, with what the server and its stubs need to find."""
        env = dict(os.environ)
        # The stub links libpython: without this interpreter's LIBDIR it picks the system's (another patch
        # release) and fails oddly; without the wheel's libs it dies and the server hangs.
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub runs the first `python3` on PATH's environment: this venv's, not sys.executable resolved.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env


def unavailable_reason(name: str, configs: dict[str, cfg.pb.ModelConfig], _seen: frozenset = frozenset()) -> str | None:
    """Why a model cannot load on this local Triton (None: it can)."""
    config = configs.get(name)
    if config is None:
        return "not in the repository"
    if config.platform == "ensemble":
        if name in _seen:
            return "ensemble refers to itself"
        for step in config.ensemble_scheduling.step:
            reason = unavailable_reason(step.model_name, configs, _seen | {name})
            if reason:
                return f"step {step.model_name}: {reason}"
        return None
    if config.backend != "python":
        kind = f'platform "{config.platform}"' if config.platform else f'backend "{config.backend}"'
        return f"{kind} has no backend in this Triton build; serve it with the official Triton container"
    runtime = cfg.parameter(config, "runtime")
    if runtime and importlib.util.find_spec(runtime) is None:
        return f"the Python backend model needs {runtime}, which is not installed here"
    return None


def with_steps(models: Sequence[str], configs: dict[str, cfg.pb.ModelConfig]) -> list[str]:
    """The models and every model their ensembles' steps run, each once: what a server in model-control mode NONE
    must find in its repository (it loads what is there, and nothing on demand)."""
    out: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        out.append(name)
        for step in configs[name].ensemble_scheduling.step if configs[name].platform == "ensemble" else ():
            visit(step.model_name)

    for m in models:
        visit(m)
    return out
