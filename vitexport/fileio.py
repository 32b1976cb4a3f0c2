"""Writing files so that readers never see half of one: a temporary file in the same folder, renamed over the target.
The one writer every stage uses for sidecars, engines, configs and reports."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` atomically; the temporary file is removed whatever happens, Ctrl-C included."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def left_by_a_dead_process(pid: str) -> bool:
    """Whether a file or folder named with its writer's pid was left by a process that no longer runs (killed before
    it could clean up): the pid text is a number and /proc has no such process."""
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()
