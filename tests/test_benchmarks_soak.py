"""The soak, shortened to 20 s for CI: the script docs/reliability.md's figures come from, run as a user runs it,
against a real Triton. It asserts what happened, not how fast: every answer right, every client mistake refused
as one, the server ready with the backend processes it started."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "soak.py"


def test_a_20_second_soak_holds(tmp_path):
    command = [sys.executable, str(SCRIPT), "test_vit", "--duration", "20", "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "soak_test_vit.json").read_text())
    assert result["requests"] > 100 and result["ok"] == result["requests"]
    assert result["mismatches"] == result["errors"] == 0 and result["crashes"] == []
    kinds = {"http image", "http tensor", "grpc image", "grpc tensor"}
    assert kinds <= set(result["latency"]) and all(result["latency"][k]["ok"] > 0 for k in kinds)
    mistakes = {case: row for case, row in result["hostile"].items() if row["refused_as_client_error"] is not None}
    assert len(mistakes) >= 5 and all(row["refused_as_client_error"] for row in mistakes.values()), mistakes
    assert result["ready_at_end"] and result["stubs_unchanged"]
    assert result["memory_mb"]["max"] > 0 and result["machine"]["cpu"]
    assert (tmp_path / "soak_test_vit.png").stat().st_size > 0
    assert "The soak held." in (tmp_path / "soak_test_vit.md").read_text()


def test_slopes_over_the_second_half_and_the_last_30_minutes():
    from vitexport.bench.memory import slope

    # An hour, a sample a second: 100 MB flat for 30 minutes, then 1 MB/min more; a 20-minute run stays flat.
    series = [(float(t), 100.0 + max(0.0, t - 1800) / 60, 5) for t in range(3600)]
    assert slope(series, last_s=1800) == pytest.approx(1.0, abs=0.01)
    assert slope(series[:1200], last_s=1800) is None  # a 20-minute run has no last 30 minutes
    assert slope(series[:1200]) == 0.0  # its second half


def test_shared_memory_is_counted_once_however_many_processes_map_it(tmp_path):
    import mmap
    import os
    import uuid

    from vitexport.bench.memory import memory_mb, shared_mb

    pids = [os.getpid(), os.getpid()]  # as if two processes mapped the same files
    before = shared_mb(pids)
    path = Path("/dev/shm") / f"vitexport_test_{uuid.uuid4().hex}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * 2**20)
        first, second = mmap.mmap(fd, 8 * 2**20), mmap.mmap(fd, 8 * 2**20)
        first[: 4 * 2**20] = b"x" * (4 * 2**20)  # 4 MB of its pages touched, through one of two mappings
        assert shared_mb(pids) - before == 4.0  # the pages the file holds, once
        (me,) = memory_mb([os.getpid()]).values()
        assert me["RssShmem"] >= 4 and me["VmRSS"] >= me["RssAnon"] + me["RssShmem"] - 1
        first.close()
        second.close()
    finally:
        os.close(fd)
        path.unlink()
