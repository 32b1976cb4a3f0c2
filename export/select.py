"""Choose what to serve on a CPU: of several variants of one model, the fastest that passed its accuracy gate.

The product serves the fastest gated path, whichever runtime it is on; the speed of a variant depends on this CPU's
ISA (VNNI, BF16) so it is measured here, briefly and side by side, rather than assumed from the precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ArtifactError
from vitexport.export.runners import load_runner

CPU_FORMATS = ("onnx", "openvino")


@dataclass(frozen=True)
class Timed:
    artifact: ModelArtifact
    img_s: float


def rank_by_speed(
    artifacts: Sequence[ModelArtifact],
    *,
    batch: int = 8,
    seconds: float = 1.0,
    rounds: int = 3,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Timed]:
    """Time each gated CPU variant at `batch` (after one warm-up run) for about `seconds` in all, fastest first:
    `rounds` rounds that each time every variant for seconds / rounds (at least one call), and each variant's median
    round. Interleaved, so that a neighbour's load on a shared machine falls on every variant alike rather than on
    whichever ran during it."""
    import statistics

    models = {a.model for a in artifacts}
    if len(models) > 1:
        raise ArtifactError(f"variants of one model are needed to pick the fastest, got {', '.join(sorted(models))}")
    for a in artifacts:
        if a.format not in CPU_FORMATS:
            raise ArtifactError(f"{a.path.name} is a {a.format} artifact; the fastest is picked among ONNX and IR")
        if not a.passed_gate:
            raise ArtifactError(f"{a.path.name} has not passed its accuracy gate; optimize it again with vitexport")
    loaded = []
    for a in artifacts:
        # Spinning off: ONNX Runtime's idle threads would otherwise slow the other variants timed in this process.
        runner = load_runner(a, threads=threads, spinning=False)
        size = a.preprocess.input_size
        x = np.random.default_rng(0).standard_normal((a.batch_size or batch, 3, size, size), dtype=np.float32)
        runner(x)  # warm-up: first-run allocations and kernel selection
        loaded.append((a, runner, x))
    rates: dict[int, list[float]] = {i: [] for i in range(len(loaded))}
    for r in range(rounds):
        for i, (a, runner, x) in enumerate(loaded):
            progress(f"timing {a.path.name} (round {r + 1} of {rounds})")
            runs, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds or runs == 0:
                runner(x)
                runs += 1
            rates[i].append(runs * len(x) / elapsed)
    timed = [Timed(a, statistics.median(rates[i])) for i, (a, _, _) in enumerate(loaded)]
    return sorted(timed, key=lambda t: -t.img_s)
