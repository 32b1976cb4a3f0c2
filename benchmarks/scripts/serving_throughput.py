"""Triton-served throughput and latency (gRPC, perf_analyzer at several concurrencies) of the variant `vitexport
deploy` serves, against the same variant in-process with the same runtime and thread count. A benchmark, not a
test: run it on a quiet machine.

    .venv/bin/python benchmarks/scripts/serving_throughput.py deit_small
    .venv/bin/python benchmarks/scripts/serving_throughput.py deit_small --artifact X.xml --instances 2

With no --artifact, the model is deployed as `vitexport deploy` does (its candidates built, gated on photographs,
timed; the fastest served) in a cache folder. Served requests carry one image each; Triton's dynamic batching merges
concurrent ones, so concurrency C is compared with in-process at batch C (what the server's batching can at best
turn C requests into), and the served p50 at concurrency 1 with the in-process batch-1 latency. In-process runs go
before and after the served ones (never at the same time) and the median is reported.
Writes `benchmarks/results/serving_throughput_<model>_<runtime>_<precision>[_<tag>].json` and `.md`.
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
    threads: int = 2  # the runtime's intra-op threads, in each of the server's instances and in process alike
    max_batch_size: int = 8
    queue_delay_us: int = 1000
    instances: int = 1
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


def in_process(artifact, s: Settings) -> tuple[dict[int, float], float]:
    """Images per second of the artifact in this process at batch = each concurrency, after a warm-up, and the
    median batch-1 latency in ms. The runner is the one the served model's runtime uses, with its settings (ONNX
    Runtime without spinning; OpenVINO in latency mode), and the same thread count."""
    from vitexport.export.runners import load_runner

    run = load_runner(artifact, threads=s.threads, spinning=False)
    size = artifact.preprocess.input_size
    rates, latency_ms = {}, float("nan")
    for batch in sorted({1, *s.concurrency}):
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
        run(x)  # warm-up
        calls, start = [], time.perf_counter()
        while time.perf_counter() - start < s.inprocess_seconds:
            t = time.perf_counter()
            run(x)
            calls.append(time.perf_counter() - t)
        rates[batch] = len(calls) * batch / (time.perf_counter() - start)
        if batch == 1:
            latency_ms = statistics.median(calls) * 1e3
    return rates, latency_ms


def deployed(model: str, folder: Path, progress=print):
    """What `vitexport deploy MODEL` serves, built in `folder` the way it builds it: the candidates table and the
    chosen artifact."""
    from vitexport.export.deploy import deploy_candidates
    from vitexport.export.onnx import export_or_load
    from vitexport.export.photos import deploy_photos

    source = export_or_load(model, folder, progress=progress)
    calibration, gate = deploy_photos()
    candidates = deploy_candidates(source, folder, calibration=calibration, images=gate, progress=progress)
    return candidates[0].artifact, [c.to_dict() for c in candidates]


def executions(http_url: str) -> tuple[int, int]:
    """Triton's running totals for the model: images inferred and model executions (batches)."""
    import tritonclient.http as http

    stats = http.InferenceServerClient(http_url).get_inference_statistics("bench")["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def machine() -> dict:
    """The shared machine record, plus the server build and the load average as this report shows it."""
    info = machine_info()
    info["tritonserver"] = "2.51.0 (nvidia-pytriton wheel)"
    info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def run(model: str, artifact_path: Path | None, s: Settings, workdir: Path) -> dict:
    from vitexport.artifacts import load_artifact
    from vitexport.serving.config import Batching
    from vitexport.serving.repository import add_model
    from vitexport.serving.server import TritonServer

    info = machine()
    candidates = None
    if artifact_path is None:
        artifact, candidates = deployed(model, workdir / Path(model).stem)
    else:
        artifact = load_artifact(artifact_path)
    with tempfile.TemporaryDirectory(prefix="vitexport-bench-serving-") as tmp:
        tmp = Path(tmp)
        before, latency_before = in_process(artifact, s)
        repo = tmp / "repo"
        batching = Batching(s.max_batch_size, (), s.queue_delay_us)
        add_model(
            repo, artifact, name="bench", batching=batching, ensemble=False, instances=s.instances,
            intra_op_threads=s.threads,
        )  # fmt: skip
        tool = find_perf_analyzer(tmp / "libs")
        if tool is None:
            raise SystemExit("perf_analyzer is not installed (pip install 'vitexport[serve]')")
        served = {}
        with TritonServer(repo, models=["bench"]) as server:
            for c in s.concurrency:
                counts = executions(server.endpoints.http)
                served[c] = perf_analyzer(server.endpoints.grpc, "bench", c, s, tool)
                served[c]["load_average"] = round(os.getloadavg()[0], 2)
                # The batches Triton really ran: what dynamic batching made of C one-image requests.
                images, runs = (b - a for a, b in zip(counts, executions(server.endpoints.http), strict=True))
                served[c]["mean_batch"] = round(images / runs, 2) if runs else None
        after, latency_after = in_process(artifact, s)
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
    latency = statistics.median([latency_before, latency_after])
    served_p50 = served[1]["latency_ms_p50"] if 1 in served else None
    runtime = "openvino" if artifact.format == "openvino" else "onnxruntime"
    return {
        "benchmark": "serving_throughput",
        "model": artifact.model,
        "variant": {
            "runtime": runtime,
            "precision": str(artifact.precision),
            "artifact": artifact.path.name,
            "chosen": "by vitexport deploy, in this run" if candidates else "given with --artifact",
        },
        "candidates": candidates,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "settings": asdict(s),
        "served": f"Triton gRPC, python-{runtime} backend, {s.instances} instance(s), 1 image per request, "
        "perf_analyzer",
        "in_process_batch1_latency_ms": round(latency, 2),
        "in_process_batch1_latency_runs_ms": [round(latency_before, 2), round(latency_after, 2)],
        "served_p50_minus_in_process_ms": None if served_p50 is None else round(served_p50 - latency, 2),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    v = result["variant"]
    lines = [
        f"# Triton-served vs in-process: {result['model']}, {v['runtime']} {v['precision']} ({v['chosen']})",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores), Python {m['python']}, Triton {m['tritonserver']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + ".",
        "",
        f"Served: {result['served']}; max batch {s['max_batch_size']}, queue delay {s['queue_delay_us']} us, "
        f"{s['threads']} {v['runtime']} threads per instance (in process too). In-process: `{v['artifact']}` at "
        "batch = concurrency, median of a run before and a run after the served runs. "
        f"Load average at start {m['load_average_start']}, at end {m['load_average_end']}.",
        "",
    ]
    if s["note"]:
        lines += [f"**Note:** {s['note']}", ""]
    if result["served_p50_minus_in_process_ms"] is not None:
        lines += [
            f"Latency at concurrency 1: served p50 minus in-process batch-1 median = "
            f"**{result['served_p50_minus_in_process_ms']} ms** (in-process {result['in_process_batch1_latency_ms']} "
            "ms).",
            "",
        ]
    lines += [
        "| concurrency | served img/s | in-process img/s (batch = C) | served / in-process | p50 ms | p99 ms "
        "| server queue ms | server compute ms | mean batch run | stable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['served_img_s']} | {r['in_process_img_s']} | {r['ratio']} "
            f"| {r['latency_ms_p50']} | {r['latency_ms_p99']} | {r['server_queue_ms']} | {r['server_compute_ms']} "
            f"| {r['mean_batch']} | {'yes' if r['stable'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registered model (deployed here as `vitexport deploy` does), or an ONNX file")
    parser.add_argument("--artifact", type=Path, help="a variant to serve (ONNX or IR) instead of deploying")
    parser.add_argument("--instances", type=int, default=Settings.instances, help="Triton model instances")
    parser.add_argument("--queue-delay-us", type=int, default=Settings.queue_delay_us)
    parser.add_argument("--tag", default="", help="appended to the result's file name, e.g. 2instances")
    parser.add_argument("--workdir", type=Path, default=None, help="where deploy's candidates are built")
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
        instances=args.instances,
        queue_delay_us=args.queue_delay_us,
    )
    from vitexport.bench.bench import default_workdir

    result = run(args.model, args.artifact, settings, args.workdir or default_workdir().parent / "serving")
    args.output.mkdir(parents=True, exist_ok=True)
    v = result["variant"]
    stem = args.output / "_".join(
        x for x in ("serving_throughput", result["model"], v["runtime"], v["precision"], args.tag) if x
    )
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
