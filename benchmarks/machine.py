"""What a benchmark ran on: recorded with every result so that numbers can be compared across runs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

LIBRARIES = (
    "vitexport",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "numpy",
    "openvino",
    "nncf",
    "tritonclient",
    "nvidia-pytriton",
    "timm",  # the benchmark's timm + PyTorch peer
    "tensorrt",
)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return dict(line.split(":", 1) for line in first.splitlines() if ":" in line)


def machine_info() -> dict[str, Any]:
    cpu = {k.strip(): v.strip() for k, v in _cpuinfo().items()}
    flags = set(cpu.get("flags", "").split())
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    # The code that ran, not the metadata of an editable install, which keeps the version it was installed at.
    from vitexport import __version__

    versions["vitexport"] = __version__
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu.get("model name", platform.processor()),
        "cores": os.cpu_count(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_at_start": os.getloadavg()[0],
    }
