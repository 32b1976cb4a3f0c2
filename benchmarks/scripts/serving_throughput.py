"""Triton-served throughput (gRPC, perf_analyzer at several concurrencies) against in-process ONNX Runtime on the
same ONNX file with the same thread count. A benchmark, not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/scripts/serving_throughput.py deit_small --note "CPU shared with 3 other jobs"

Served requests carry one image each; Triton's dynamic batching merges concurrent ones, so concurrency C is
compared with in-process ONNX Runtime at batch C (what the server's batching can at best turn C requests into).
In-process runs go before and after the served ones (never at the same time) and the median is reported.
Writes `benchmarks/results/serving_throughput_<model>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitexport.bench.machine import machine_info
from vitexport.bench.perf_analyzer import PerfAnalyzer, find_perf_analyzer, measure

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...] = (1, 4, 8)
    threads: int = 2  # ONNX Runtime intra-op threads, in the server's model and in process alike
    max_batch_size: int = 8
    queue_delay_us: int = 1000
    window_ms: int = 3000  # perf_analyzer's measurement window; it repeats windows until 3 agree
    stability_percent: int = 20
    max_trials: int = 6
    inprocess_seconds: float = 4.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def perf_analyzer(url: str, model: str, concurrency: int, s: Settings, tool: PerfAnalyzer) -> dict:
    return measure(
        tool,
        url,
        model,
        concurrency=concurrency,
        window_ms=s.window_ms,
        stability_percent=s.stability_percent,
        max_trials=s.max_trials,
    )


def in_process(onnx: Path, img_size: int, s: Settings) -> dict[int, float]:
    """Images per second of ONNX Runtime in this process at batch = each concurrency, after a warm-up."""
    from vitexport.ort import ort_session

    session = ort_session(onnx, threads=s.threads, spinning=False)  # as the served model runs
    rates = {}
    for batch in s.concurrency:
        x = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
        session.run(None, {"pixel_values": x})  # warm-up
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < s.inprocess_seconds:
            session.run(None, {"pixel_values": x})
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - start)
    return rates


def machine() -> dict:
    """The shared machine record, plus the server build and the load average as this report shows it."""
    info = machine_info()
    info["tritonserver"] = "2.51.0 (nvidia-pytriton wheel)"
    info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def run(model: str, onnx: Path | None, s: Settings) -> dict:
    from vitexport.artifacts import load_artifact
    from vitexport.serving.config import Batching
    from vitexport.serving.repository import add_model
    from vitexport.serving.server import TritonServer

    info = machine()
    with tempfile.TemporaryDirectory(prefix="vitexport-bench-serving-") as tmp:
        tmp = Path(tmp)
        if onnx is None:
            from vitexport.export.onnx import export_onnx

            onnx = export_onnx(model, tmp / f"{model}.onnx").path
        artifact = load_artifact(onnx)
        S = artifact.preprocess.input_size
        before = in_process(artifact.path, S, s)
        repo = tmp / "repo"
        batching = Batching(s.max_batch_size, (), s.queue_delay_us)
        add_model(repo, artifact, name="bench", batching=batching, ensemble=False, intra_op_threads=s.threads)
        tool = find_perf_analyzer(tmp / "libs")
        if tool is None:
            raise SystemExit("perf_analyzer is not installed (pip install 'vitexport[serve]')")
        served = {}
        with TritonServer(repo, models=["bench"]) as server:
            for c in s.concurrency:
                served[c] = perf_analyzer(server.endpoints.grpc, "bench", c, s, tool)
                served[c]["load_average"] = round(os.getloadavg()[0], 2)
        after = in_process(artifact.path, S, s)
    rows = []
    for c in s.concurrency:
        reference = statistics.median([before[c], after[c]])
        rows.append(
            {
                "concurrency": c,
                "served_img_s": served[c]["img_s"],
                "in_process_batch": c,
                "in_process_img_s": round(reference, 2),
                "in_process_runs_img_s": [round(before[c], 2), round(after[c], 2)],
                "ratio": round(served[c]["img_s"] / reference, 3),
                **{k: v for k, v in served[c].items() if k != "img_s"},
            }
        )
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "serving_throughput",
        "model": artifact.model,
        "onnx": str(onnx) if onnx else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "settings": asdict(s),
        "served": "Triton gRPC, python-onnxruntime backend, 1 instance, 1 image per request, perf_analyzer",
        "rows": rows,
    }


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"# Triton-served vs in-process ONNX Runtime: {result['model']}",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores), Python {m['python']}, Triton {m['tritonserver']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + ".",
        "",
        f"Served: {result['served']}; max batch {s['max_batch_size']}, queue delay {s['queue_delay_us']} us, "
        f"{s['threads']} ONNX Runtime threads (in process too, spinning off in both). In-process ONNX Runtime at "
        "batch = concurrency, median of a run before and a run after the served runs. "
        f"Load average at start {m['load_average_start']}, at end {m['load_average_end']}.",
        "",
    ]
    if s["note"]:
        lines += [f"**Note:** {s['note']}", ""]
    lines += [
        "| concurrency | served img/s | in-process img/s (batch = C) | served / in-process | p50 ms | p99 ms "
        "| server queue ms | server compute ms | stable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['served_img_s']} | {r['in_process_img_s']} | {r['ratio']} "
            f"| {r['latency_ms_p50']} | {r['latency_ms_p99']} | {r['server_queue_ms']} | {r['server_compute_ms']} "
            f"| {'yes' if r['stable'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registered model (exported here) or, with --onnx, its name for the report")
    parser.add_argument("--onnx", type=Path, help="an exported ONNX artifact to use instead of exporting")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(Settings.concurrency))
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument("--window-ms", type=int, default=Settings.window_ms)
    parser.add_argument("--seconds", type=float, default=Settings.inprocess_seconds, help="per in-process point")
    parser.add_argument("--note", default="", help="recorded with the result, e.g. the machine's other load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = Settings(
        concurrency=tuple(args.concurrency),
        threads=args.threads,
        max_batch_size=max(8, *args.concurrency),
        window_ms=args.window_ms,
        inprocess_seconds=args.seconds,
        note=args.note,
    )
    result = run(args.model, args.onnx, settings)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"serving_throughput_{result['model']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
