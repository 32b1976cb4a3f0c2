"""Triton's processes on this machine, read from /proc: the Python backend stubs a server runs (whose death Triton
does not report: `TritonServer.check_backends` watches them), and what servers whose owner was killed left behind
(work folders, shared-memory regions), removed by the next start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitexport.fileio import left_by_a_dead_process

SHM_DIR = Path("/dev/shm")
WORKDIR_PREFIX = "vitexport-triton-"
STUB = "triton_python_backend_stub"


def remove_orphaned_workdirs() -> None:
    """Remove the work folders (backend links, log) of servers whose owner was killed before it could clean up;
    the owner's pid is in the folder's name."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        if left_by_a_dead_process(folder.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]):
            shutil.rmtree(folder, ignore_errors=True)


def remove_orphaned_regions() -> None:
    """Remove the Python backend's shared-memory regions of servers whose owner died before it could clean up (they
    hold request bytes); the owner's pid is in our prefix, vitexport_<pid>_."""
    for region in SHM_DIR.glob("vitexport_*_*"):
        if left_by_a_dead_process(region.name.split("_")[1]):
            with contextlib.suppress(OSError):
                region.unlink()


def in_child() -> None:
    """In the child before exec: files Triton and its stubs create are private to this user (umask 077; their
    shared-memory regions are created 0644 regardless, and `TritonServer._private_regions` changes those); and
    SIGTERM when the process (thread) that started Triton dies, even by SIGKILL, so that a killed `vitexport serve`
    leaves no server behind (Linux only; elsewhere stop() is the only guard)."""
    import ctypes

    os.umask(0o077)
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Stub:
    """A Python backend stub process: one per model instance (`<model>_<group>_<index>`)."""

    pid: int
    model: str
    instance: str


def proc_stat(pid: int | str) -> tuple[str, str, int]:
    """(command name, state, parent pid) of a process, from /proc/PID/stat (OSError: no such process). The name
    sits in parentheses and may hold spaces and parentheses itself, hence the last ")"."""
    comm, rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    state, ppid = rest.split()[:2]
    return comm.split("(", 1)[1], state, int(ppid)


def process_alive(pid: int) -> bool:
    """Running, not a zombie its parent has yet to reap."""
    try:
        return proc_stat(pid)[1] != "Z"
    except OSError:
        return False


def stubs_of(server_pid: int) -> tuple[list[Stub], list[int]]:
    """The instance stubs a tritonserver runs, from /proc, and the pids of its stubs that died unreaped (zombies,
    whose command line is gone). A stub's arguments are the model file (<repository>/<model>/<version>/model.py),
    the shm region, two sizes, the parent's pid, the backend folder, the IPC handle, the instance name and the
    runtime. Stubs named as the model itself are the short-lived ones that auto-complete its config, not an
    instance; Triton reaps those as they exit."""
    running, dead = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, state, ppid = proc_stat(entry.name)
            if ppid != server_pid or not STUB.startswith(comm):  # comm: the first 15 characters
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        if state == "Z":
            dead.append(int(entry.name))
        elif len(argv) > 8 and argv[8] != (model := Path(argv[1]).parent.parent.name):
            running.append(Stub(int(entry.name), model, argv[8]))
    return running, dead
