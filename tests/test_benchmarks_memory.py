"""The soak's memory accounting: slopes over the second half and the last 30 minutes, and shared memory counted
once however many processes map it."""

import mmap
import os
import uuid
from pathlib import Path

import pytest

from vitexport.bench.memory import memory_mb, shared_mb, slope


def test_slopes_over_the_second_half_and_the_last_30_minutes():
    # An hour, a sample a second: 100 MB flat for 30 minutes, then 1 MB/min more; a 20-minute run stays flat.
    series = [(float(t), 100.0 + max(0.0, t - 1800) / 60, 5) for t in range(3600)]
    assert slope(series, last_s=1800) == pytest.approx(1.0, abs=0.01)
    assert slope(series[:1200], last_s=1800) is None  # a 20-minute run has no last 30 minutes
    assert slope(series[:1200]) == 0.0  # its second half


def test_shared_memory_is_counted_once_however_many_processes_map_it():
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
