"""What a Triton run's log and exit status say, in one line: why it stopped (its exit status or the signal that
killed it) and the error lines of this run only.

"This run" is a byte offset into the log: a server that died while serving is explained by what it logged after it
was ready, never by a line of its start. Every start on a machine without a GPU logs errors that are not faults
(`CudaDriverHelper has not been initialized`, `unable to create stream for <ensemble>: CUDA driver version is
insufficient`): they are left out, or every death message would end in one of them."""

from __future__ import annotations

import re
import signal
from pathlib import Path

# The complaints of a GPU-less machine, logged as errors at every start: never the cause of anything here.
NOISE = ("CudaDriverHelper", "CUDA driver version is insufficient", "Failed to initialize NVML", "DCGM")
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")
# A crash outside glog: the C++ runtime's last words (then Triton's "Signal (6) received." and a stack trace).
_CRASH = ("terminate called", "what():")


def exit_reason(returncode: int | None) -> str:
    """How a process ended, from Popen's return code (negative: the signal that killed it)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def size(path: Path | None) -> int:
    """The log's length now: the offset from which later lines are this phase's."""
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def tail(path: Path | None, lines: int = 20, *, since: int = 0) -> list[str]:
    """The log's last lines written from byte `since` on (at most the last 1 MB of them)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as log:
            end = log.seek(0, 2)
            log.seek(max(since, end - 2**20))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def last_error(path: Path | None, *, since: int = 0, errors_only: bool = False) -> str:
    """The last error line (glog's `E` lines, less the GPU-less noise) logged from byte `since` on, without its glog
    prefix; else the last line that is not noise (or "", `errors_only`)."""
    lines = [line for line in tail(path, 200, since=since) if line.strip() and not any(n in line for n in NOISE)]
    errors = [line for line in lines if _GLOG.match(line) and line[0] in "EF"]
    if errors_only and not errors:
        return ""
    if not errors and not lines:
        return ""
    line = (errors or lines)[-1]
    return _GLOG.sub("", line).strip().strip('"')


def death(what: str, returncode: int | None, path: Path | None, *, since: int) -> str:
    """One line: `what` (tritonserver) and how it ended, with the error it logged since `since`, if any."""
    crash = [line.strip() for line in tail(path, 200, since=since) if line.strip().startswith(_CRASH)]
    error = last_error(path, since=since, errors_only=True) or (crash[0] if crash else "")
    return f"{what} {exit_reason(returncode)}{f': {error}' if error else ''}"
