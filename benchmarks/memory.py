"""The soak's memory samples: the resident memory of Triton and each of its stubs, read from /proc, and how fast it
grows once the runtimes have warmed up."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from vitexport.serving.processes import proc_stat


def process_tree(root: int) -> list[int]:
    """A process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(proc_stat(entry.name)[2], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_mb(pids: list[int]) -> dict[str, float]:
    """RSS in MB of each process, named: tritonserver, or a stub by its model instance."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            kb = int(next(line for line in status if line.startswith("VmRSS:")).split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            name = argv[8] if argv[0].endswith("triton_python_backend_stub") else Path(argv[0]).name
            out[name] = out.get(name, 0.0) + kb / 1024
    return out


def last_half_slope(series: list[tuple[float, float, int]]) -> float | None:
    """MB per minute over the second half of the run (least squares): a leak keeps climbing there; the runtimes'
    arenas grow in steps early on, as they meet new batch sizes, and then stay."""
    half = series[len(series) // 2 :]
    if len(half) < 3:
        return None
    t, mb = np.array([p[0] for p in half]), np.array([p[1] for p in half])
    return round(float(np.polyfit(t, mb, 1)[0]) * 60, 2)
