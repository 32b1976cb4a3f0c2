"""Soak a real Triton serving a model: many clients for a bounded time, every answer checked against ONNX Runtime in
process, hostile requests mixed in, memory sampled (benchmarks/soak.py says what runs). Exit 1 if anything failed.

    .venv/bin/python benchmarks/scripts/soak.py deit_small               # 2 minutes, 8 clients
    .venv/bin/python benchmarks/scripts/soak.py test_vit --duration 20   # what CI runs: tests/test_benchmarks_soak.py

Writes `soak_<model>[_<tag>].json`, `.md` and `.png` into --output (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from vitexport.bench.soak import SoakSettings, passed, serve_and_soak

RESULTS = Path(__file__).resolve().parents[1] / "results"


def markdown(result: dict[str, Any]) -> str:
    m, s, load = result["machine"], result["settings"], result.get("load_average", {})
    lines = [
        f"# Soak: {result['model']} ({result['artifact']['backend']}, {result['artifact']['precision']})",
        "",
        f"{m['date']}, {m['cpu']}, {m['cores']} cores; {s['clients']} clients (half HTTP, half gRPC, each alternating "
        f"photographs through the image ensemble and tensors to the model) for {s['duration_s']:g} s; one hostile "
        f"request every {s['hostile_every_s']:g} s. Every answer checked against ONNX Runtime in process "
        f"(atol {s['atol']:g}). Server start {result['server_start_s']} s. Load average {load.get('start', '?')} "
        f"at the start, {load.get('end', '?')} at the end.",
        "",
        f"**{result['requests']} requests, {result['ok']} right, {result['mismatches']} wrong, "
        f"{result['errors']} errors** ({result['img_s']} req/s); ready at the end: {result['ready_at_end']}; "
        f"backend processes unchanged: {result['stubs_unchanged']}.",
        "",
        "| requests | right | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for kind, row in result["latency"].items():
        lines.append(f"| {kind} | {row['ok']} | {row['p50_ms']} | {row['p99_ms']} |")
    lines += ["", *_memory_lines(result["memory_mb"])]
    lines += [
        "",
        "| hostile request | sent | answers | refused as the client's mistake | slowest ms |",
        "|---|---:|---|---|---:|",
    ]
    for case, row in result["hostile"].items():
        answers = ", ".join(f"{k} x{v}" for k, v in row["statuses"].items())
        refused = {True: "yes", False: "**no**", None: "n/a"}[row["refused_as_client_error"]]
        lines.append(f"| {case} | {row['sent']} | {answers} | {refused} | {row['max_ms']} |")
    problems = passed(result)
    lines += ["", "**The soak held.**" if not problems else "**Problems:** " + "; ".join(problems), ""]
    return "\n".join(lines)


def _memory_lines(mem: dict[str, Any]) -> list[str]:
    private = mem.get("private_and_shared", {})

    def processes(key: str) -> str:
        return ", ".join(f"{name} {a} -> {b}" for name, (a, b) in mem.get(key, {}).items())

    return [
        f"Memory of Triton and its stubs (RSS, MB): first quarter {mem['first_quarter']}, last quarter "
        f"{mem['last_quarter']}, max {mem['max']}; over the second half {mem.get('last_half_slope_mb_per_min')} "
        f"MB/min, over the last 30 minutes {mem.get('last_30_min_slope_mb_per_min')} MB/min (None: a shorter run). "
        f"By process (first quarter -> last quarter): {processes('by_process')}.",
        "",
        "Without counting the shared-memory pools once per process that touched them (private memory, RssAnon, plus "
        f"the /dev/shm pools once): first quarter {private.get('first_quarter')}, last quarter "
        f"{private.get('last_quarter')}; over the second half {private.get('last_half_slope_mb_per_min')} MB/min, "
        f"over the last 30 minutes {private.get('last_30_min_slope_mb_per_min')} MB/min. Private memory by process: "
        f"{processes('by_process_private')}.",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for kind in sorted({k for _, k, _, _ in result["timeline"]}):
        points = [(t, ms) for t, k, ms, o in result["timeline"] if k == kind]
        top.scatter(*zip(*points, strict=True), s=4, label=kind)
    bad = [(t, ms) for t, _, ms, o in result["timeline"] if o != "ok"]
    if bad:
        top.scatter(*zip(*bad, strict=True), s=30, marker="x", color="red", label="wrong or error")
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.legend(fontsize=7, markerscale=3)
    series = result["memory_mb"]["series"]
    bottom.plot([t for t, _, _ in series], [m for _, m, _ in series], label="RSS of Triton + stubs")
    private = result["memory_mb"].get("private_series", [])
    bottom.plot([t for t, _, _ in private], [m for _, m, _ in private], label="private + /dev/shm once")
    bottom.set_ylabel("MB")
    bottom.legend(fontsize=7)
    bottom.set_xlabel("seconds")
    fig.suptitle(f"soak: {result['model']}, {result['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a registered model (exported to fp32 ONNX first) or an artifact file")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hostile-every", type=float, default=1.0, help="seconds between hostile requests")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)

    from vitexport.export.onnx import export_or_load

    settings = SoakSettings(duration_s=args.duration, clients=args.clients, hostile_every_s=args.hostile_every)
    with tempfile.TemporaryDirectory(prefix="vitexport-soak-") as tmp:
        artifact = export_or_load(args.model, Path(tmp), progress=lambda m: print(m, flush=True))
        result = serve_and_soak(artifact, Path(tmp), settings, progress=lambda m: print(m, flush=True))
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"soak_{artifact.model}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    problems = passed(result)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
