"""What the validating front (serving/front.py) costs: perf_analyzer at concurrency 1 and 8, over gRPC and HTTP,
against the same served model with the front (what `serve` runs) and without it (Triton on the public ports, as
before the front; `TritonServer(front=False)`, for this measurement only). A benchmark, not a test: run it on a quiet
machine.

    .venv/bin/python benchmarks/scripts/front_cost.py
    .venv/bin/python benchmarks/scripts/front_cost.py --model test_vit --rounds 1

The model is exported with random weights (the cost does not depend on them) and served plain (pixels in, logits
out, one image per request, 3x224x224 FP32 for DeiT-Tiny: 602 KB a request), so each request carries the bytes that
the front must read and check. The two setups take turns, `--rounds` times, and each row is the median of its rounds.
Writes `<output>/front_cost_<model>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vitexport.bench.machine import machine_info
from vitexport.bench.perf_analyzer import PerfAnalyzer, find_perf_analyzer, measure

RESULTS = Path(__file__).resolve().parents[1] / "results" / "amd-epyc-zen3"
CONCURRENCY = (1, 8)
PROTOCOLS = ("grpc", "http")
SETUPS = {"without": False, "with": True}  # the front off, on


def served_round(repo: Path, front: bool, tool: PerfAnalyzer, window_ms: int) -> dict[tuple[str, int], dict]:
    from vitexport.serving.front import Limits
    from vitexport.serving.server import TritonServer

    out = {}
    with TritonServer(repo, models=["bench"], front=Limits() if front else None) as server:
        assert server.endpoints is not None
        for protocol in PROTOCOLS:
            url = server.endpoints.grpc if protocol == "grpc" else server.endpoints.http
            for c in CONCURRENCY:
                out[protocol, c] = measure(
                    tool, url, "bench", protocol=protocol, concurrency=c, window_ms=window_ms, max_trials=6
                )
                out[protocol, c]["load_average"] = round(os.getloadavg()[0], 2)
    return out


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def run(model: str, rounds: int, window_ms: int) -> dict:
    from vitexport.export.onnx import export_onnx
    from vitexport.serving.config import Batching
    from vitexport.serving.repository import add_model

    info = machine_info()
    info["tritonserver"] = "2.51.0 (nvidia-pytriton wheel)"
    with tempfile.TemporaryDirectory(prefix="vitexport-front-cost-") as tmp:
        artifact = export_onnx(model, Path(tmp) / f"{model}.onnx")
        repo = Path(tmp) / "repo"
        add_model(repo, artifact, name="bench", batching=Batching(8, (), 1000), ensemble=False, intra_op_threads=2)
        tool = find_perf_analyzer(Path(tmp) / "libs")
        if tool is None:
            raise SystemExit("perf_analyzer is not installed (pip install 'vitexport[serve]')")
        runs: dict[str, list[dict]] = {setup: [] for setup in SETUPS}
        for _ in range(rounds):
            for setup, front in SETUPS.items():
                runs[setup].append(served_round(repo, front, tool, window_ms))
    rows = []
    for protocol in PROTOCOLS:
        for c in CONCURRENCY:
            row: dict = {"protocol": protocol, "concurrency": c}
            for setup in SETUPS:
                measured = [r[protocol, c] for r in runs[setup]]
                for key in ("img_s", "latency_ms_p50", "latency_ms_p99"):
                    row[f"{key}_{setup}"] = median_of(measured, key)
                row[f"stable_{setup}"] = all(m["stable"] for m in measured)
                row[f"rounds_{setup}"] = measured
            rows.append(row)
    return {
        "benchmark": "front_cost",
        "model": model,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "settings": {"rounds": rounds, "window_ms": window_ms, "max_batch_size": 8, "queue_delay_us": 1000},
        "served": "The plain model (python-onnxruntime backend, 1 instance, 2 threads), 1 image per request, "
        "perf_analyzer's zero-filled input",
        "rows": rows,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# What the validating front costs: {result['model']}, served plain",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores), Python {m['python']}, Triton {m['tritonserver']}. "
        f"{result['served']}; median of {result['settings']['rounds']} round(s), the two setups in turns. "
        "Command: `.venv/bin/python benchmarks/scripts/front_cost.py "
        f"--model {result['model']} --rounds {result['settings']['rounds']}`.",
        "",
        "| protocol | concurrency | img/s without | img/s with | ratio | p50 ms without | p50 ms with | p99 ms without "
        "| p99 ms with |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = r["img_s_with"] / r["img_s_without"] if r["img_s_with"] and r["img_s_without"] else None
        cells = [r["protocol"], r["concurrency"], r["img_s_without"], r["img_s_with"], ratio and f"{ratio:.3f}"]
        cells += [r[f"{k}_{s}"] for k in ("latency_ms_p50", "latency_ms_p99") for s in SETUPS]
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.model, args.rounds, args.window_ms)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"front_cost_{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
