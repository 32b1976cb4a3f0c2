"""Wall time and peak RSS of `vitexport onnx MODEL` (export, checker, ONNX Runtime validation), and where the
time goes. Target from the foundation issue: deit_base <= 15 s on 2 cores, validation included.

    .venv/bin/python benchmarks/scripts/export_time.py [--model deit_base] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitexport.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"


def cli_run(model: str, out_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vitexport.cli", "onnx", model, "--output", str(out_dir / f"{model}.onnx"), "--json"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def stage_breakdown(model: str, out_dir: Path) -> dict[str, float]:
    """Seconds per stage, from the export's own progress messages, in a fresh process."""
    code = f"""
import json, sys, time
t0 = time.perf_counter(); marks = []
from vitexport.export.onnx import export_onnx
marks.append(("imports", time.perf_counter()))
export_onnx({model!r}, {str(out_dir / "breakdown.onnx")!r}, progress=lambda m: marks.append((m, time.perf_counter())))
marks.append(("done", time.perf_counter()))
names = [m for m, _ in marks[:-1]]; times = [t for _, t in marks]
print(json.dumps({{"imports": times[0] - t0, **{{n: b - a for n, a, b in zip(names[1:], times[1:], times[2:])}}}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {k: round(v, 2) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_base")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        machine = machine_info()
        times = [cli_run(args.model, Path(tmp)) for _ in range(args.repeats)]
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child's peak
        breakdown = stage_breakdown(args.model, Path(tmp))
    result = {
        "benchmark": "export_time",
        "command": f"vitexport onnx {args.model}",
        "machine": machine,
        "settings": {"repeats": args.repeats, "opset": 18, "validation_batches": [1, 4]},
        "wall_s": {"median": round(statistics.median(times), 2), "min": round(min(times), 2), "all": times},
        "peak_rss_mb": round(peak_rss_mb),
        "stages_s": breakdown,
        "target_s": 15,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"export_time_{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in breakdown.items())
    load = machine["load_average_at_start"]
    (RESULTS / f"export_time_{args.model}.md").write_text(
        f"# `{result['command']}`\n\n{machine['cpu']}, {machine['cores']} cores, load {load}"
        f" at start; torch {machine['versions'].get('torch')}, onnxruntime {machine['versions'].get('onnxruntime')}\n\n"
        f"| wall time, median of {args.repeats} | min | peak RSS | target |\n|---|---|---|---|\n"
        f"| {result['wall_s']['median']} s | {result['wall_s']['min']} s | {result['peak_rss_mb']} MB | <= 15 s |\n\n"
        f"Stages (one in-process run, seconds):\n\n| stage | s |\n|---|---|\n{rows}\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
