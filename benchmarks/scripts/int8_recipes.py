"""INT8 against this machine's int8 limit: OpenVINO INT8 variants of DeiT-S and DeiT-B by each NNCF recipe, each
gated (drift from fp32 on real photographs), timed at batch 8 beside the int8 GEMM peak measured in the same run
(before and after the models), and profiled with OpenVINO's per-layer counters: where the time goes, by op type and
the precision each op really ran in. A benchmark, not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/scripts/int8_recipes.py deit_small deit_base
    # -> benchmarks/results/int8_recipes.json and .md

Everything runs in this one process and only OpenVINO computes while timing (the fp32 reference for the gate runs
first, on ONNX Runtime with spinning off), so no other runtime's threads compete.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
BATCH = 8


def recipes():
    """Every recipe tried, the production ones (export/openvino.int8_recipes) first."""
    from vitexport.export.openvino import Int8Recipe, int8_recipes

    return (*int8_recipes(transformer=True), Int8Recipe("performance-preset", transformer=False))


def gemm_peak(threads: int, seconds: float) -> dict[str, float]:
    """GOP/s of the int8 GEMMs (OpenVINO's Q/DQ MatMul, ONNX Runtime's MatMulInteger), best of 3 windows."""
    from vitexport.bench.gemm import GemmSpec

    out = {}
    for runtime in ("openvino", "onnxruntime"):
        spec = GemmSpec(runtime, "int8", threads)
        gemm = spec.build()
        gemm.infer(None)
        out[runtime] = max(spec.flops * _calls_per_s(lambda g=gemm: g.infer(None), seconds) / 1e9 for _ in range(3))
    return out


def _calls_per_s(fn, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def profile(compiled, x: np.ndarray, runs: int = 5) -> dict[str, dict[str, float]]:
    """Milliseconds per batch by op type and the kernel it ran (OpenVINO's exec_type names the implementation and
    its precision: `brgemm_avx2_I8`, `jit_avx2_FP32`, `ref_any_f32`), summed over the graph and averaged over `runs`
    inferences."""
    request = compiled.create_infer_request()
    request.infer({0: x})
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            if p.status.name == "EXECUTED":
                totals[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / runs
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])
    return {f"{op} {kernel}": round(ms, 2) for (op, kernel), ms in ordered}


def int8_share(by_op: dict[str, float]) -> float:
    """The share of the time spent in int8 kernels."""
    total = sum(by_op.values())
    return round(sum(ms for k, ms in by_op.items() if k.lower().endswith(("i8", "u8"))) / total, 3) if total else 0.0


def run_model(model: str, workdir: Path, threads: int, seconds: float, progress=print) -> dict:
    import openvino as ov

    from vitexport.export import openvino as ovx
    from vitexport.export.gate import evaluate, load_image_folder
    from vitexport.export.onnx import export_or_load
    from vitexport.export.optimize import CALIBRATION_LIMIT
    from vitexport.export.photos import deploy_photos
    from vitexport.export.runners import load_runner
    from vitexport.models import get_spec

    folder = workdir / model
    folder.mkdir(parents=True, exist_ok=True)
    source = export_or_load(model, folder, progress=progress)
    spec = get_spec(source.model)
    cfg = source.preprocess
    calibration, gate = deploy_photos()  # what `deploy` calibrates and gates on
    calib = load_image_folder(calibration, cfg, limit=CALIBRATION_LIMIT).images
    gate_images = load_image_folder(gate, cfg)
    reference = load_runner(source, threads=threads, spinning=False)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    rows = []
    for recipe in recipes():
        progress(f"{source.model}: NNCF {recipe.name}")
        output = folder / f"{source.model}.int8-{recipe.name}.xml"
        start = time.perf_counter()
        ovx.save_ir(
            ovx.quantize_int8(ovx.convert_onnx(source.path), calib, recipe, input_name=source.input_name), output
        )
        build_s = time.perf_counter() - start
        compiled = ovx.compile_ir(output, "int8", threads)
        request = compiled.create_infer_request()

        def candidate(batch, request=request, compiled=compiled):
            return [np.asarray(request.infer({0: batch})[compiled.output(0)])]

        report = evaluate(
            candidate, reference, precision="int8", input_size=cfg.input_size, images=gate_images
        )  # the gate `optimize` applies
        candidate(x)
        rates = [BATCH * _calls_per_s(lambda: candidate(x), seconds) for _ in range(3)]
        profiled = ov.Core().compile_model(
            str(output), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
        )
        by_op = profile(profiled, x)
        rows.append(
            {"recipe": recipe.name, "smooth_quant": recipe.smooth_quant}
            | {"model_type": "transformer" if recipe.transformer else None}
            | _measured(report, rates, spec.macs(), build_s)
            | {"int8_time_share": int8_share(by_op), "profile_ms_per_batch": by_op}
        )
    rows.append(_onnxruntime_int8(source, x, threads, seconds, spec.macs(), gate_images, folder, progress))
    return {"model": source.model, "gop_per_image": round(2 * spec.macs() / 1e9, 3), "recipes": rows}


def _onnxruntime_int8(source, x, threads, seconds, macs, gate_images, folder, progress) -> dict:
    """ONNX Runtime's INT8 variant as `optimize` builds it (dynamic MatMulInteger for transformers; 7-bit weights
    where the CPU has no VNNI), through the same gate, timed the same way: the other int8 kernel `deploy` weighs."""
    from vitexport.export.optimize import Precision, Runtime, optimize
    from vitexport.export.photos import deploy_photos
    from vitexport.export.runners import load_runner

    progress(f"{source.model}: ONNX Runtime INT8")
    calibration, gate = deploy_photos()
    start = time.perf_counter()
    variant = optimize(
        source,
        runtime=Runtime.onnxruntime,
        precision=Precision.int8,
        calibration=calibration,
        images=gate,
        output=folder / f"{source.model}.onnxruntime-int8.onnx",
        validate=False,  # gated below, on the same images and by the same budget as the recipes
    )
    build_s = time.perf_counter() - start
    run = load_runner(variant, threads=threads, spinning=False)
    from vitexport.export.gate import evaluate

    reference = load_runner(source, threads=threads, spinning=False)
    report = evaluate(run, reference, precision="int8", input_size=x.shape[-1], images=gate_images)
    run(x)
    rates = [BATCH * _calls_per_s(lambda: run(x), seconds) for _ in range(3)]
    method = (variant.details.get("quantization") or {}).get("method", "?")
    return (
        {"recipe": f"onnxruntime {method}", "smooth_quant": False, "model_type": None}
        | _measured(report, rates, macs, build_s)
        | {"int8_time_share": None, "profile_ms_per_batch": {}}
    )


def _measured(report, rates: list[float], macs: int, build_s: float) -> dict:
    """A row's gate verdict on the photographs and its speed: the median window, and GOP/s (2 x MACs per image)."""
    return {
        "build_s": round(build_s, 1),
        "gate_passed": report.passed,
        "failures": report.failures,
        "worst_cosine": min(r.cosine for r in report.images),
        "top1_agreement": min(r.top1_agreement for r in report.images),
        "img_s": round(statistics.median(rates), 2),
        "img_s_windows": [round(r, 2) for r in rates],
        "gop_s": round(statistics.median(rates) * 2 * macs / 1e9, 1),
    }


def markdown(result: dict) -> str:
    m, peak = result["machine"], result["int8_peak_gop_s"]
    lines = [
        "# INT8 recipes against the int8 GEMM peak",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores; int8 dot products: {m['int8']}), "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". Batch {BATCH}, {result['threads']} threads, OpenVINO latency mode; 3 windows of {result['seconds']} s, "
        "median.",
        "",
        f"int8 GEMM peak ({peak['size']}³, best window): before the models OpenVINO {peak['before']['openvino']:.0f}, "
        f"ONNX Runtime {peak['before']['onnxruntime']:.0f} GOP/s; after: OpenVINO {peak['after']['openvino']:.0f}, "
        f"ONNX Runtime {peak['after']['onnxruntime']:.0f}. The fraction uses the best of the four: "
        f"**{peak['best']:.0f} GOP/s**.",
        "",
        "| model | recipe | gate | worst cosine | top-1 agreement | img/s | GOP/s | of int8 peak | time in int8 "
        "kernels | build s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in result["models"]:
        for r in model["recipes"]:
            lines.append(
                f"| {model['model']} | {r['recipe']} | {'passed' if r['gate_passed'] else 'over budget'} | "
                f"{r['worst_cosine']:.4f} | {r['top1_agreement']:.3f} | {r['img_s']} | {r['gop_s']} | "
                f"{r['gop_s'] / peak['best'] * 100:.0f}% | {_percent(r['int8_time_share'])} | {r['build_s']} |"
            )
    lines += ["", "## Where the time goes (ms per batch of 8, by op type and OpenVINO's kernel)", ""]
    for model in result["models"]:
        for r in model["recipes"]:
            if not r["profile_ms_per_batch"]:
                continue
            top = ", ".join(f"{k} {v}" for k, v in list(r["profile_ms_per_batch"].items())[:8])
            lines.append(f"- {model['model']}, {r['recipe']}: {top}")
    return "\n".join(lines) + "\n"


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


def main(argv: list[str] | None = None) -> None:
    from vitexport.bench.bench import default_workdir
    from vitexport.bench.gemm import N
    from vitexport.bench.machine import machine_info
    from vitexport.export.cpu import int8_saturates

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="per timing window")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    workdir = args.workdir or default_workdir().parent / "int8_recipes"
    machine = machine_info() | {"int8": "no VNNI: 7-bit weights" if int8_saturates() else "VNNI/AMX"}
    before = gemm_peak(args.threads, args.seconds)
    models = [run_model(m, workdir, args.threads, args.seconds) for m in args.models]
    after = gemm_peak(args.threads, args.seconds)
    best = max(*before.values(), *after.values())
    result = {
        "benchmark": "int8_recipes",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "threads": args.threads,
        "seconds": args.seconds,
        "batch": BATCH,
        "int8_peak_gop_s": {"size": N, "before": before, "after": after, "best": best},
        "models": models,
    }
    for model in models:
        for r in model["recipes"]:
            r["fraction_of_int8_peak"] = round(r["gop_s"] / best, 3)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "int8_recipes.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "int8_recipes.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
