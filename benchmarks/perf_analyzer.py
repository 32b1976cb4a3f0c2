"""perf_analyzer, the load generator Triton ships (in the tritonclient 2.51.0 wheel): finding it, running it at one
concurrency, and reading its report into one format that the bench's served path and the standalone serving script
both record."""

from __future__ import annotations

import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitexport.errors import ServingError

# perf_analyzer links these by their plain sonames; nvidia-pytriton ships them under hashed names.
_LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]  # LD_LIBRARY_PATH with the plain-named library links first


def find_perf_analyzer(folder: Path | None = None) -> PerfAnalyzer | None:
    """perf_analyzer and the environment it runs in (library links made in `folder`), or None where it is missing."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.is_file():
        found = shutil.which("perf_analyzer")
        if not found:
            return None
        binary = Path(found)
    try:
        from vitexport.serving.install import TritonInstall

        libs = TritonInstall.find().libs
    except ServingError:
        return None
    folder = folder or Path(tempfile.gettempdir()) / f"vitexport-perf-analyzer-{os.getuid()}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for plain, prefix in _LIBS.items():
            (folder / plain).unlink(missing_ok=True)
            (folder / plain).symlink_to(sorted(libs.glob(f"{prefix}*"))[0])
    except (IndexError, OSError):  # the wheel lacks one of the libraries
        return None
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(folder), env.get("LD_LIBRARY_PATH", "")) if p)
    return PerfAnalyzer(binary, env)


def measure(
    tool: PerfAnalyzer,
    url: str,
    model: str,
    *,
    protocol: str = "grpc",
    concurrency: int = 1,
    window_ms: int = 2000,
    stability_percent: int = 15,
    max_trials: int = 8,
    timeout_s: float = 900,
    input_data: Path | None = None,
) -> dict[str, Any]:
    """One concurrency: one image per request, time windows repeated until three agree within the stability bound.

    Returns img_s, latency_ms_p50/p90/p99 and the server's queue and compute time per request (ms), `stable: True`.
    When the windows never agree (a busy machine) perf_analyzer writes no report: the windows' median throughput is
    kept, `stable: False`, latencies None, rather than nothing."""
    with tempfile.TemporaryDirectory(prefix="vitexport-pa-") as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(tool.binary),
            *("-m", model, "-u", url, "-i", protocol, "-b", "1"),
            f"--concurrency-range={concurrency}:{concurrency}",
            "--measurement-mode=time_windows",
            f"--measurement-interval={window_ms}",
            f"--stability-percentage={stability_percent}",
            f"--max-trials={max_trials}",
            # Zeros, not perf_analyzer's default random bytes: read as FP32 those hold NaN and Inf, which the served
            # classifier refuses (a client error), and denormals, which slow fp32 arithmetic. The work of these
            # models does not depend on the values otherwise.
            f"--input-data={input_data or 'zero'}",
            *("-f", str(report)),
            "-v",  # per-window throughput, kept when the windows never stabilise
        ]
        done = subprocess.run(command, env=tool.env, capture_output=True, text=True, timeout=timeout_s)
        if report.is_file():
            return _stable(report_row(report))
    passes = [float(x) for x in re.findall(r"Pass \[\d+\] throughput: ([0-9.]+) infer/sec", done.stdout)]
    if not passes:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise ServingError(f"perf_analyzer failed ({done.returncode}): {tail[0]}")
    latencies = dict.fromkeys(("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "server_queue_ms"))
    return {
        "tool": "perf_analyzer",
        "img_s": round(statistics.median(passes), 3),
        **latencies,
        "server_compute_ms": None,
        "stable": False,
        "windows_img_s": passes,
    }


def _stable(us: dict[str, float]) -> dict[str, Any]:
    """The measurement of a run whose windows agreed: perf_analyzer's report (microseconds) in img/s and ms."""
    return {
        "tool": "perf_analyzer",
        "img_s": round(us["Inferences/Second"], 3),
        "latency_ms_p50": round(us["p50 latency"] / 1e3, 3),
        "latency_ms_p90": round(us["p90 latency"] / 1e3, 3),
        "latency_ms_p99": round(us["p99 latency"] / 1e3, 3),
        "server_queue_ms": round(us.get("Server Queue", 0) / 1e3, 3),
        "server_compute_ms": round(us.get("Server Compute Infer", 0) / 1e3, 3),
        **{key: round(us[column] / 1e3, 3) for key, column in _TIMES.items() if column in us},
        # The mean latency is the sum of the report's parts (perf_analyzer's CSV has no column of its own for it).
        "latency_ms_avg": round(sum(us.get(column, 0) for column in _PARTS) / 1e3, 3),
        "stable": True,
    }


# The rest of the report's times (microseconds): the client's mean latency and its parts, where perf_analyzer has
# them. "Network+Server Send/Recv" is the request's time on the wire and in the server, as the client sees it.
_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
_TIMES = {
    "client_send_ms": "Client Send",
    "network_ms": "Network+Server Send/Recv",
    "client_recv_ms": "Client Recv",
    "server_compute_input_ms": "Server Compute Input",
    "server_compute_output_ms": "Server Compute Output",
}


def report_row(report: Path) -> dict[str, float]:
    """perf_analyzer's CSV report (`-f`): its one data row, numeric columns only (latencies in microseconds)."""
    with report.open() as f:
        row = next(csv.DictReader(f))
    return {k: float(v) for k, v in row.items() if k and v and v.replace(".", "", 1).isdigit()}
