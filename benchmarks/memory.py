"""The soak's memory samples: the resident memory of Triton and each of its stubs, read from /proc, and how fast it
grows once the runtimes have warmed up.

A process's RSS counts the pages of the Python backend's shared-memory pools (/dev/shm) it has touched, and Triton and
every stub touch the same ones: summed over processes they count several times. So each process's private memory
(RssAnon: heaps, arenas, the runtimes) is read apart, and the pools are counted once, by their files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from vitexport.serving.processes import proc_stat

FIELDS = ("VmRSS", "RssAnon", "RssShmem")


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


def _name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return argv[8] if argv[0].endswith("triton_python_backend_stub") else Path(argv[0]).name


def memory_mb(pids: list[int]) -> dict[str, dict[str, float]]:
    """{name: {VmRSS, RssAnon, RssShmem}} in MB of each process, named: tritonserver, or a stub by its model
    instance."""
    out: dict[str, dict[str, float]] = {}
    for pid in pids:
        with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            kb = {f: int(next(line for line in status if line.startswith(f + ":")).split()[1]) for f in FIELDS}
            row = out.setdefault(_name(pid), dict.fromkeys(FIELDS, 0.0))
            for field in FIELDS:
                row[field] += kb[field] / 1024
    return out


def rss_mb(pids: list[int]) -> dict[str, float]:
    """RSS in MB of each process, named: tritonserver, or a stub by its model instance."""
    return {name: m["VmRSS"] for name, m in memory_mb(pids).items()}


def shared_mb(pids: list[int]) -> float:
    """MB held by the /dev/shm files the processes map (the Python backend's pools, each counted once): a tmpfs file
    holds its pages until it is removed, whoever touched them."""
    files: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                path = fields[5] if len(fields) == 6 else ""
                if path.startswith("/dev/shm/"):
                    with contextlib.suppress(OSError):
                        st = os.stat(path)
                        if (st.st_dev, st.st_ino) not in files:
                            files.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
    return total / 2**20


def slope(series: list[tuple[float, float, int]], *, last_s: float | None = None) -> float | None:
    """MB per minute (least squares) over the second half of the run, or over its last `last_s` seconds (None when
    the run was shorter than that): a leak keeps climbing there; the runtimes' arenas grow in steps early on, as they
    meet new batch sizes, and then stay."""
    if last_s is None:
        window = series[len(series) // 2 :]
    elif not series or series[-1][0] - series[0][0] < last_s:
        return None
    else:
        window = [p for p in series if p[0] >= series[-1][0] - last_s]
    if len(window) < 3:
        return None
    t, mb = np.array([p[0] for p in window]), np.array([p[1] for p in window])
    return round(float(np.polyfit(t, mb, 1)[0]) * 60, 2)


def last_half_slope(series: list[tuple[float, float, int]]) -> float | None:
    """MB per minute over the second half of the run."""
    return slope(series)
