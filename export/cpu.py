"""What the CPU's int8 kernels can do, for the quantizers.

x86 CPUs without VNNI (AVX2-only ones, such as AMD Zen 3) multiply uint8 by int8 with `vpmaddubsw`, whose 16-bit
pairwise sums saturate; both ONNX Runtime's and NNCF's documentation name the fix: 7-bit weights (ORT's
`reduce_range`, NNCF's overflow fix on every layer). Measured on a Zen 3 EPYC: ORT dynamic INT8 of the digits ViT gave
a worst-image cosine of 0.955 with 8-bit weights (the gate asks 0.98). With VNNI or AMX the full 8 bits are exact.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none to read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def int8_saturates() -> bool:
    """Whether 8-bit weights risk saturating this CPU's int8 dot products: an x86 CPU whose flags name no VNNI."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return bool(flags) and not flags & VNNI_FLAGS
