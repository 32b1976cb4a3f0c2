"""Timed windows in worker processes, interleaved across backends.

Each backend runs in its own spawned worker (its threads never share a process with another runtime's), and the
parent asks the workers for one window at a time, round robin, so that a change in the machine's load (this CPU is
shared) falls on every backend alike rather than on whichever ran last. Each (backend, batch size) gets a warm-up
window, then several measured windows; we keep the median and the spread of their throughputs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.errors import VitExportError, first_line


@dataclass(frozen=True)
class SweepSettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    windows: int = 3  # measured windows per (backend, batch size)
    duration: float = 2.0  # seconds per window (a window always holds at least one batch)
    warmup: float = 1.0  # seconds of warm-up per (backend, batch size), at least two batches
    threads: int = 2
    # A backend whose batch takes longer (after warm-up) is not swept at this or larger batch sizes: it would take
    # the run's time for a figure that only says "far too slow" (e.g. BF16 emulated on a CPU without BF16).
    max_batch_seconds: float = 30.0


@dataclass(frozen=True)
class Window:
    images: int
    seconds: float
    latencies_ms: tuple[float, ...]  # per batch

    @property
    def throughput(self) -> float:
        return self.images / self.seconds


@dataclass
class Measurement:
    """All windows of one (backend, batch size), and their summary."""

    batch_size: int
    windows: list[Window] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rates = [w.throughput for w in self.windows]
        lat = np.array([x for w in self.windows for x in w.latencies_ms])
        median = statistics.median(rates)
        return {
            "img_s": round(median, 3),
            "img_s_min": round(min(rates), 3),
            "img_s_max": round(max(rates), 3),
            "spread": round((max(rates) - min(rates)) / median, 4),  # (max - min) / median of the windows
            "windows": [round(r, 3) for r in rates],
            "batches": int(lat.size),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p90": round(float(np.percentile(lat, 90)), 3),
        }


# -- the worker ------------------------------------------------------------------------------------------------


def _worker(conn, spec, log: str | None) -> None:
    """Build the runner, report ready (with its real precision), then run windows on request until "quit"."""
    if log:  # runtimes' warnings go to the log, not over the parent's progress display
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    try:
        runner = spec.build() if hasattr(spec, "build") else _build(spec)
    except Exception as e:
        conn.send(("error", _one_line(e)))
        return
    conn.send(("ready", runner.precision))
    inputs: dict[int, np.ndarray] = {}
    while True:
        message = conn.recv()
        if message[0] == "quit":
            return
        _, batch_size, img_size, seconds, min_batches = message
        if batch_size not in inputs:
            from vitexport.bench.runners import random_batch

            inputs = {batch_size: random_batch(batch_size, img_size)}  # one batch size at a time: bounded memory
        x = inputs[batch_size]
        try:
            latencies, start = [], time.perf_counter()
            while True:
                t = time.perf_counter()
                runner.infer(x)
                now = time.perf_counter()
                latencies.append((now - t) * 1e3)
                if now - start >= seconds and len(latencies) >= min_batches:
                    break
            conn.send(("window", Window(batch_size * len(latencies), now - start, tuple(latencies))))
        except Exception as e:
            conn.send(("error", _one_line(e)))
            return


def _build(spec):
    from vitexport.bench.runners import build_runner

    return build_runner(spec)


def _one_line(e: BaseException) -> str:
    """A user's error as it reads; anything else with its type, which says more than its message alone."""
    return first_line(e) if isinstance(e, VitExportError) else f"{type(e).__name__}: {first_line(e)}"


class Worker:
    """A spawned process holding one runner."""

    def __init__(self, name: str, spec: Any, log: Path | None = None):
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's torch threads and state
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, spec, str(log) if log else None), daemon=True)
        self.process.start()
        child.close()
        self.precision: str | None = None
        self.error: str | None = None
        self.limited: str | None = None  # why larger batch sizes were not measured

    def wait_ready(self, timeout: float = 900) -> bool:
        if not self.conn.poll(timeout):
            self.error = f"did not load within {timeout:.0f} s"
            return False
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.error = f"the worker died while loading (exit code {self.process.exitcode})"
            return False
        if kind == "error":
            self.error = value
            return False
        self.precision = value
        return True

    def window(self, batch_size: int, img_size: int, seconds: float, min_batches: int) -> Window | None:
        if self.error:
            return None
        try:
            self.conn.send(("window", batch_size, img_size, seconds, min_batches))
            kind, value = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            kind, value = "error", f"the worker died (exit code {self.process.exitcode}; out of memory?)"
        if kind == "error":
            self.error = value
            return None
        return value

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("quit",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()  # only our own child, by its handle
            self.process.join(5)


@contextlib.contextmanager
def workers(specs: dict[str, Any], logs: Path | None = None):
    """Start all workers at once (they load in parallel), and stop them all on the way out."""
    started: dict[str, Worker] = {}
    try:
        for name, spec in specs.items():
            log = logs / f"{name}.log" if logs else None
            started[name] = Worker(name, spec, log)
        yield started
    finally:
        for w in started.values():
            w.close()


def sweep(
    pool: dict[str, Worker],
    settings: SweepSettings,
    img_size: int,
    progress: Callable[[str], None] = lambda _: None,
    label: str = "",
    batch_sizes: Sequence[int] | None = None,
) -> dict[str, dict[int, Measurement]]:
    """Measured windows of every ready worker at every batch size, interleaved; failed workers are left out (their
    `error` says why)."""
    results: dict[str, dict[int, Measurement]] = {name: {} for name in pool}
    for bs in batch_sizes or settings.batch_sizes:
        for name, w in pool.items():
            if w.limited:
                continue
            progress(f"{label} batch {bs}: warming up {name}")
            warm = w.window(bs, img_size, settings.warmup, 2)  # torch.compile compiles here; one graph per batch size
            if warm is not None and warm.latencies_ms[-1] > settings.max_batch_seconds * 1e3:
                w.limited = (
                    f"not measured from batch {bs} on: {warm.latencies_ms[-1] / 1e3:.0f} s per batch "
                    f"(over the {settings.max_batch_seconds:.0f} s limit)"
                )
        names = [n for n, w in pool.items() if not w.error and not w.limited]
        for k in range(settings.windows):
            # Rotate the order each round: no backend always runs right after the same neighbour.
            order = names[k % len(names) :] + names[: k % len(names)] if names else []
            for name in order:
                w = pool[name]
                window = w.window(bs, img_size, settings.duration, 1)
                if window is None:
                    continue
                results[name].setdefault(bs, Measurement(bs)).windows.append(window)
                progress(f"{label} batch {bs} window {k + 1}/{settings.windows}: {name} {window.throughput:.1f} img/s")
    return {name: m for name, m in results.items() if not pool[name].error}
