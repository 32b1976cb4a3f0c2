"""The Swin paper's Table 1(a) throughput, measured with the models interleaved: every model's ONNX Runtime fp32
variant in its own worker process, all loaded at once, one window of each model in turn (the order rotating each
round), with a window of the fp32 GEMM peak among them. `vitexport bench` sweeps one model after another, so on a
shared CPU whose load moves, its ratios between models measure the neighbours as much as the models; here a change
in load falls on every model alike, and the ratios to DeiT-S come from windows taken side by side.

    .venv/bin/python benchmarks/scripts/swin_table.py [--rounds 3] [--duration 2] [--batch-size 8]
        [--workdir /tmp/vitexport-bench-work]

The variants come from `vitexport bench`'s work folder, made by its `prepare` when missing (with their accuracy
gate; with --no-validate without it, and then not called gated). Writes benchmarks/results/swin_table.{json,md,*.png}
through vitexport.bench.report, so the Markdown has the same tables as a `vitexport bench` run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vitexport.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"
GEMM = "onnxruntime-fp32"  # the GEMM peak's worker, named as `vitexport bench` names it
MODELS = (
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "deit_base_patch16_224",
    "swin_base_patch4_window12_384",
    "vit_base_patch16_384",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vitexport-bench-work"))
    parser.add_argument("--no-validate", dest="validate", action="store_false")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--prefix", default="swin_table")
    args = parser.parse_args()

    from vitexport.artifacts import load_artifact
    from vitexport.bench.gemm import GemmSpec, peak_table
    from vitexport.bench.prepare import prepare
    from vitexport.bench.report import swin_table, verdicts, write
    from vitexport.bench.runners import BenchBackend, RunnerSpec
    from vitexport.bench.sweep import Measurement, workers
    from vitexport.models import get_spec

    started = time.time()
    machine = machine_info()
    loads: list[float] = [os.getloadavg()[0]]
    backend = BenchBackend.onnxruntime
    specs, paths = {}, {}
    for name in args.models.split(","):
        spec = get_spec(name)
        got, skipped, _ = prepare(spec.name, [backend], args.workdir, validate=args.validate, progress=_say)
        if backend in skipped:
            sys.exit(f"{spec.name}: {skipped[backend]}")
        specs[spec.name], paths[spec.name] = spec, got[backend]
    loads.append(os.getloadavg()[0])
    runners: dict[str, object] = {n: RunnerSpec(backend, n, args.threads, p) for n, p in paths.items()}
    # The fp32 GEMM peak, one window per round among the models' windows: measured under the same load as them.
    gemm = GemmSpec("onnxruntime", "fp32", args.threads, args.gemm_size)
    runners[GEMM] = gemm
    sizes = {n: s.img_size for n, s in specs.items()} | {GEMM: 1}
    batch = {n: args.batch_size for n in specs} | {GEMM: 1}
    measured = {n: Measurement(batch[n]) for n in runners}
    logs = args.workdir / "logs" / args.prefix
    logs.mkdir(parents=True, exist_ok=True)
    with workers(runners, logs) as pool:
        for name, w in pool.items():
            if not w.wait_ready():
                sys.exit(f"{name}: {w.error}")
        names = list(pool)
        for name in names:  # warm-up: at least two batches each
            _say(f"warming up {name}")
            pool[name].window(batch[name], sizes[name], 0.5, 2)
        for k in range(args.rounds):
            order = names[k % len(names) :] + names[: k % len(names)]
            for name in order:
                window = pool[name].window(batch[name], sizes[name], args.duration, 1)
                if window is None:
                    sys.exit(f"{name}: {pool[name].error}")
                measured[name].windows.append(window)
                loads.append(os.getloadavg()[0])
                _say(f"round {k + 1}/{args.rounds}: {name} {window.throughput:.2f} img/s, load {loads[-1]:.2f}")
        precisions = {n: w.precision for n, w in pool.items()}

    g = measured[GEMM].summary()
    peaks = {
        GEMM: {
            "status": "ok",
            "precision": "fp32",
            "gflops": round(g["img_s_max"] * gemm.flops / 1e9, 1),  # the best window, as `vitexport bench`
            "gflops_median": round(g["img_s"] * gemm.flops / 1e9, 1),
            "size": args.gemm_size,
            "spread": g["spread"],
            "calls_s": g["img_s"],
        }
    }
    peak = peak_table(peaks)
    models = {}
    for name, spec in specs.items():
        validation = load_artifact(paths[name]).validation or {}
        summary = measured[name].summary()
        summary["gflops"] = round(summary["img_s"] * 2 * spec.macs() / 1e9, 2)
        summary["fraction_of_peak"] = round(summary["gflops"] / peak["fp32"], 3)
        models[name] = {
            "family": spec.family,
            "params": spec.num_params,
            "resolution": spec.img_size,
            "gflop_per_image": round(2 * spec.macs() / 1e9, 3),
            "in_process": {
                backend.value: {
                    "status": "ok",
                    "peer": False,
                    "gated": bool(validation.get("passed")) and "images" in validation,
                    "precision": precisions[name] or "fp32",
                    "artifact": paths[name].name,
                    "batches": {str(args.batch_size): summary},
                }
            },
            "served": {},
            "served_skipped": {},
        }
    result = {
        "benchmark": "swin_table",
        "title": "The Swin paper's throughput table, models interleaved (benchmarks/scripts/swin_table.py)",
        "command": "python benchmarks/scripts/swin_table.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "settings": {
            "batch_sizes": [args.batch_size],
            "windows": args.rounds,
            "duration": args.duration,
            "warmup": 0.5,
            "threads": args.threads,
            "validate": args.validate,
            "interleaved": "interleaved across models (one window of each in turn, the order rotating each round), "
            "each model in its own process",
            "backends": [backend.value],
            "onnxruntime_spinning": False,
        },
        "load_average": {"start": round(loads[0], 2), "end": round(loads[-1], 2), "max": round(max(loads), 2)},
        "load_average_per_window": [round(x, 2) for x in loads[2:]],
        "wall_seconds": round(time.time() - started),
        "peaks": peaks,
        "peak_gflops": peak,
        "models": models,
    }
    result["paper_table"] = []  # the DeiT paper's table needs ResNet-50: `vitexport bench` makes it
    result["swin_table"] = swin_table(result)
    result["verdicts"] = verdicts(result)
    for path in write(result, args.output, args.prefix).values():
        print(path)


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


if __name__ == "__main__":
    main()
