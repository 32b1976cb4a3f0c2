"""The GEMM peaks of a `vitexport bench` run, measured so that they are peaks: every library's matmul at several sizes,
in rounds interleaved with the models (one before the first model and one after each), its workers kept alive
between rounds. A precision's peak is the best window of any library, size and round, or a row's own best window
where a model did more operations per second than every GEMM window (a shared machine's load moves: then the row is
the best evidence of what the machine can do). So no row's median is over 100% of its peak; the report says which
measurement set each peak and the spread of the GEMM windows behind it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitexport.bench.gemm import GEMMS, GemmSpec
from vitexport.bench.sweep import SweepSettings, Worker, sweep, workers

Progress = Callable[[str], None]


class GemmRounds:
    """The GEMM workers of a run, and every window they measured, by library and size (GFLOP/s; int8: GOP/s)."""

    def __init__(self, pool: dict[str, Worker], specs: dict[str, GemmSpec], settings: SweepSettings, skipped):
        self.pool, self.specs, self.settings = pool, specs, settings
        self.windows: dict[str, dict[int, list[float]]] = {name: {} for name in pool}
        self.rounds = 0
        self.skipped: dict[str, dict[str, Any]] = skipped  # not measured, with the reason

    def round(self, label: str, progress: Progress) -> None:
        """One round: every library at every size, a warm-up (the first round only) then the run's windows."""
        settings = self.settings if self.rounds == 0 else SweepSettings(**(asdict(self.settings) | {"warmup": 0.05}))
        sizes = self.specs[next(iter(self.specs))].sizes if self.specs else ()
        measured = sweep(self.pool, settings, 1, progress, f"GEMM peak ({label})", batch_sizes=sizes)
        for name, by_size in measured.items():
            for n, m in by_size.items():
                # The sweep's "batch size" is the matmul's side (see GemmSpec): a window's images are n per call.
                rates = [w.throughput / n * 2 * n**3 / 1e9 for w in m.windows]
                self.windows[name].setdefault(n, []).extend(rates)
        self.rounds += 1

    def results(self) -> dict[str, dict[str, Any]]:
        """Each library's best window (its peak), the size it came at, and min/median/max of every window at each
        size over all rounds."""
        out = dict(self.skipped)
        for name, w in self.pool.items():
            spec = self.specs[name]
            by_size = {n: rates for n, rates in self.windows[name].items() if rates}
            if not by_size:
                out[name] = {"status": "failed", "reason": w.error or "not measured", "precision": spec.precision}
                continue
            best_n = max(by_size, key=lambda n: max(by_size[n]))
            best = by_size[best_n]
            out[name] = {
                "status": "ok",
                "precision": w.precision,
                "gflops": round(max(best), 1),
                "gflops_median": round(statistics.median(best), 1),
                "gflops_min": round(min(best), 1),
                "size": best_n,
                "spread": round((max(best) - min(best)) / statistics.median(best), 4),
                "rounds": self.rounds,
                "sizes": {str(n): _spread(rates) for n, rates in sorted(by_size.items())},
            }
        return out


def _spread(rates: list[float]) -> dict[str, float]:
    return {
        "min": round(min(rates), 1),
        "median": round(statistics.median(rates), 1),
        "max": round(max(rates), 1),
        "windows": len(rates),
    }


@contextmanager
def gemm_rounds(
    sizes: tuple[int, ...], settings: SweepSettings, logs: Path, no_bf16: str | None, progress: Progress
) -> Iterator[GemmRounds]:
    """The GEMM workers, loaded and kept for the run's rounds; stopped on the way out."""
    specs = {f"{rt}-{p}": GemmSpec(rt, p, settings.threads, max(sizes), sizes) for rt, p in GEMMS}
    # torch's bf16 matmul without BF16 instructions is emulated: measured here (Zen 3, AVX2) over a minute per
    # 2048^3 call on 2 busy cores, which would hold the whole run for a figure that is not a peak.
    skipped = {}
    if no_bf16 and "torch-bf16" in specs:
        skipped["torch-bf16"] = {"status": "skipped", "reason": no_bf16, "precision": specs.pop("torch-bf16").precision}
    progress("GEMM peaks: loading")
    with workers(specs, logs) as pool:
        for w in pool.values():
            w.wait_ready()
        yield GemmRounds(pool, specs, settings, skipped)


def peaks_by_precision(
    peaks: dict[str, dict[str, Any]], models: dict[str, dict[str, Any]]
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """({precision: peak}, {precision: what set it and the GEMM windows' spread behind it}): the best GEMM window,
    or a model row's best window (its GFLOP/s at img_s_max) where that is higher."""
    table: dict[str, float] = {}
    sources: dict[str, dict[str, Any]] = {}
    for name, p in peaks.items():
        if p.get("status") == "ok" and p.get("gflops") and p["gflops"] > table.get(p["precision"], 0.0):
            table[p["precision"]] = p["gflops"]
            spread = p.get("sizes", {}).get(str(p.get("size")), {})
            sources[p["precision"]] = {"source": f"GEMM {name} {p.get('size', '?')}³", **spread}
    for model, m in models.items():
        gflop = m.get("gflop_per_image")
        for backend, e in m.get("in_process", {}).items():
            if e.get("status") != "ok" or not gflop:
                continue
            for bs, point in e["batches"].items():
                rate = point["img_s_max"] * gflop
                precision = e["precision"]
                if rate > table.get(precision, 0.0) and precision in table:
                    table[precision] = rate  # unrounded: a row's median over it must come out at most 1
                    gemm = {k: v for k, v in sources[precision].items() if k != "source"}
                    gemm["gemm_source"] = sources[precision].get("gemm_source", sources[precision]["source"])
                    sources[precision] = {"source": f"row {model} {backend} batch {bs} (its best window)", **gemm}
    return table, sources


def fill_fractions(models: dict[str, dict[str, Any]], peak: dict[str, float]) -> None:
    """Each in-process row's fraction of its precision's peak: its median window's operations per second (from the
    unrounded img/s, as the peak was) over the peak."""
    for m in models.values():
        gflop = m.get("gflop_per_image")
        for e in m.get("in_process", {}).values():
            if e.get("status") != "ok":
                continue
            for point in e["batches"].values():
                top = peak.get(e["precision"])
                point["fraction_of_peak"] = float(f"{point['img_s'] * gflop / top:.4g}") if gflop and top else None
