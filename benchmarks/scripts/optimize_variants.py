"""Benchmark (not a test): every optimized variant (runtime x precision) of DeiT-S, DeiT-B and ResNet-50, their
drift from fp32 on real images beside their speed, a labelled accuracy check on a tiny ViT trained on scikit-learn's
digits, and the machine's fp32/bf16 GEMM peaks, all in one run.

Hygiene (docs/benchmarks.md, "Hygiene"): every build, every timed variant and every GEMM peak runs in
its own process, so no runtime's spinning threads or OpenMP pool slows another; warm-up first, medians reported.

    .venv/bin/python benchmarks/scripts/optimize_variants.py --duration 3
    # -> benchmarks/results/optimize_variants.json and .md

ImageNet weights cannot be downloaded here, so the large models have seeded random weights: their figures are
drift and agreement with fp32 on real images (digits and scikit-learn's two sample photos), not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from vitexport.errors import first_line

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("deit_small", "deit_base", "resnet50")
GEMM_KINDS = ("openvino-f32", "openvino-bf16", "onnxruntime-f32", "torch-f32", "torch-bf16")
GEMM_N = 2048
DIGITS_MODEL = "test_vit_digits"


@dataclass(frozen=True)
class Variant:
    runtime: str
    precision: str
    fusion: str | None  # None: the runtime's default for the precision

    @property
    def key(self) -> str:
        fusion = f"-{self.fusion}" if self.fusion else ""
        return f"{self.runtime}{fusion}-{self.precision}"


VARIANTS = (
    Variant("onnxruntime", "fp32", "none"),  # the exported graph as is: the portable reference
    Variant("onnxruntime", "fp32", "ort"),
    Variant("onnxruntime", "fp16", "onnx"),  # the TensorRT graph; ORT's CPU provider runs it for validation only
    Variant("onnxruntime", "int8", "ort"),
    Variant("openvino", "fp32", None),
    Variant("openvino", "fp16", None),  # runs in f16 only on CPUs with AVX512_FP16 or AMX-FP16, else f32
    Variant("openvino", "bf16", None),
    Variant("openvino", "int8", None),
)


# --- workers: each runs in its own process and prints one JSON line -------------------------------------------------


def worker_build(model: str, work: Path, images: Path, calibration: Path, checkpoint: str | None) -> dict:
    """Export `model` (seeded random weights, or a checkpoint), build every variant, run the gate on each."""
    import torch

    from vitexport.errors import ValidationError
    from vitexport.export.fusion import Fusion
    from vitexport.export.gate import load_image_folder
    from vitexport.export.onnx import export_onnx
    from vitexport.export.optimize import Precision, Runtime, gate, optimize

    torch.manual_seed(0)
    t0 = time.perf_counter()
    source = export_onnx(model, work / f"{model}.onnx", checkpoint=checkpoint)
    results = {"export_s": time.perf_counter() - t0, "variants": {}}
    eval_images = load_image_folder(images, source.preprocess)
    for v in VARIANTS:
        entry: dict = {"variant": asdict(v)}
        t0 = time.perf_counter()
        try:
            if v.runtime == "onnxruntime" and v.precision == "fp32" and v.fusion == "none":
                artifact, report = source, gate(source, source, eval_images).to_dict()
            else:
                # Built through the gate, as `vitexport optimize` does (OpenVINO INT8 tries its recipes in order);
                # a variant over budget with every recipe is built again without the gate, so it is still timed.
                output = work / f"{model}.{v.key}{'.xml' if v.runtime == 'openvino' else '.onnx'}"
                build = partial(
                    optimize,
                    source,
                    runtime=Runtime(v.runtime),
                    precision=Precision(v.precision),
                    fuse_attention=Fusion(v.fusion) if v.fusion else None,
                    calibration=calibration,
                    calibration_limit=64,
                    images=images,
                    output=output,
                )
                try:
                    artifact = build()
                    report = artifact.validation
                except ValidationError:
                    artifact = build(validate=False)
                    report = gate(artifact, source, eval_images).to_dict()
            entry["build_s"] = time.perf_counter() - t0
            entry |= {"sidecar": str(artifact.sidecar), "gate": report, "details": artifact.details}
        except Exception as e:  # a variant that cannot be built is a result too
            entry["error"] = f"{type(e).__name__}: {first_line(e)}"
        results["variants"][v.key] = entry
    return results


def worker_time(sidecar: str, batch: int, threads: int, duration: float) -> dict:
    from vitexport.artifacts import load_artifact
    from vitexport.export.runners import load_runner

    artifact = load_artifact(sidecar)
    t0 = time.perf_counter()
    run = load_runner(artifact, threads=threads)
    load_s = time.perf_counter() - t0
    S = artifact.preprocess.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, S, S), dtype=np.float32)
    first = 0.0
    for _ in range(2):  # warm-up: first runs allocate and (OpenVINO) finish compiling kernels
        t = time.perf_counter()
        run(x)
        first = time.perf_counter() - t
        if first > duration:
            break
    # Very slow variants (emulated BF16, FP16 on ORT's CPU provider) get a single timed run instead of three.
    min_runs = 1 if first > duration else 3
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < duration:
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"batch": batch, "runs": len(times), "median_s": median, "img_s": batch / median, "load_s": load_s}


def worker_gemm(kind: str, threads: int, duration: float) -> dict:
    n = GEMM_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    runtime, precision = kind.split("-")
    if runtime == "openvino":
        import openvino as ov
        import openvino.opset13 as ops
        import openvino.properties as props
        import openvino.properties.hint as hints

        param = ops.parameter([n, n], ov.Type.f32, name="a")
        model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param])
        config = {hints.inference_precision: precision, props.inference_num_threads: threads}
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def step():
            request.infer({0: a})

        actual = str(compiled.get_property(hints.inference_precision).get_type_name())
    elif runtime == "onnxruntime":
        import onnx

        from vitexport.ort import ort_session

        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
            "gemm",
            [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n])],
            [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
            [onnx.numpy_helper.from_array(b, "b")],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
        session = ort_session(model.SerializeToString(), threads=threads)

        def step():
            session.run(None, {"a": a})

        actual = precision
    else:
        import torch

        torch.set_num_threads(threads)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)

        def step():
            torch.mm(ta, tb)

        actual = precision
    step()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < duration:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    flop = 2 * n**3
    return {
        "kind": kind,
        "executes_as": actual,
        "n": n,
        "median_gflops": flop / float(np.median(times)) / 1e9,
        "best_gflops": flop / min(times) / 1e9,
        "runs": len(times),
    }


# --- orchestration ----------------------------------------------------------------------------------------------


def _spawn(args: list[str], threads: int, timeout: float = 3600) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker {args[0]} exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _write_images(folder: Path, calibration: Path, digits_root: Path) -> None:
    """Real images: digits (upsampled) and crops of scikit-learn's two sample photos, as flat folders; and the
    digits' train/test split as ImageFolders for the labelled check."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from vitexport.bench.digits import load_digits_images, split, write_image_folder

    images, labels = load_digits_images(64)
    train_idx, test_idx = split(len(labels))
    write_image_folder(digits_root / "train", images[train_idx], labels[train_idx])
    write_image_folder(digits_root / "test", images[test_idx], labels[test_idx])
    folder.mkdir(parents=True)
    calibration.mkdir(parents=True)
    for i in test_idx[:48]:
        Image.fromarray(images[i]).save(folder / f"digit_{i:04d}.png")
    for i in train_idx[:56]:
        Image.fromarray(images[i]).save(calibration / f"digit_{i:04d}.png")
    for k, photo in enumerate(load_sample_images().images):  # china.jpg, flower.jpg: 427 x 640
        h, w = photo.shape[:2]
        for j, (top, left) in enumerate([(0, 0), (0, w - h), (h // 4, (w - h) // 2), (0, (w - h) // 2)]):
            crop = Image.fromarray(photo[top : top + h * 3 // 4, left : left + h * 3 // 4])
            crop.save((folder if j < 2 else calibration) / f"photo_{k}_{j}.png")


def _machine() -> dict:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
    versions = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "numpy", "onnxconverter_common"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": [f for f in wanted if f in flags],
        "python": platform.python_version(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--check-models", nargs="*", default=["deit_base_distilled"], help="Built and gated, not timed."
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="Seconds timed per variant and batch.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="Free text recorded with the results (e.g. the CPU was shared).")
    parser.add_argument("--render", type=Path, help="Re-render this result JSON's Markdown (adds end GEMM peaks).")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.render:
        # Re-render a result file's Markdown, after measuring the end-of-run GEMM peaks if it lacks them.
        results = json.loads(args.render.read_text())
        if "gemm_end" not in results:
            results["gemm_end"] = {kind: _spawn(["--worker", "gemm", kind], args.threads) for kind in GEMM_KINDS}
            if args.note:
                results["settings"]["note"] += " " + args.note
        args.render.write_text(json.dumps(results, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(render_markdown(results))
        return

    if args.worker:
        kind, *rest = args.worker
        if kind == "build":
            model, work, images, calibration, checkpoint = rest
            result = worker_build(model, Path(work), Path(images), Path(calibration), checkpoint or None)
        elif kind == "time":
            result = worker_time(rest[0], int(rest[1]), args.threads, args.duration)
        else:
            result = worker_gemm(rest[0], args.threads, args.duration)
        print(json.dumps(result))
        return

    load_start = os.getloadavg()
    started = time.perf_counter()
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": {
            "threads": args.threads,
            "batches": args.batches,
            "duration_s": args.duration,
            "gemm_n": GEMM_N,
            "calibration_images": 60,  # 56 digits and 4 photo crops
            "note": args.note,
        },
        "gemm": {},
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="vitexport-bench-") as tmp:
        tmp = Path(tmp)
        images, calibration, digits = tmp / "images", tmp / "calibration", tmp / "digits"
        _write_images(images, calibration, digits)
        for kind in GEMM_KINDS:
            print(f"gemm {kind}", file=sys.stderr)
            results["gemm"][kind] = _spawn(["--worker", "gemm", kind], args.threads)

        # The labelled check: a tiny ViT trained on the digits, every variant's top-1 on the held-out split.
        print("labelled check (digits)", file=sys.stderr)
        from vitexport.bench.digits import train

        checkpoint = tmp / "digits.pt"
        trained_top1 = train(checkpoint, model=DIGITS_MODEL)
        build = _spawn(
            ["--worker", "build", DIGITS_MODEL, str(tmp), str(digits / "test"), str(digits / "train"), str(checkpoint)],
            args.threads,
        )
        results["labelled_check"] = {"model": DIGITS_MODEL, "pytorch_top1": trained_top1, **build}

        for model in [*args.models, *args.check_models]:
            print(f"building {model}", file=sys.stderr)
            work = tmp / model
            work.mkdir()
            build = _spawn(["--worker", "build", model, str(work), str(images), str(calibration), ""], args.threads)
            results["models"][model] = build
            for key, entry in build.get("variants", {}).items():
                if "sidecar" not in entry or model not in args.models:
                    continue
                entry["timing"] = {}
                for batch in args.batches:
                    print(f"timing {model} {key} batch {batch}", file=sys.stderr)
                    entry["timing"][str(batch)] = _spawn(
                        [
                            "--threads",
                            str(args.threads),
                            "--duration",
                            str(args.duration),
                            "--worker",
                            "time",
                            entry["sidecar"],
                            str(batch),
                        ],
                        args.threads,
                    )
        # Peaks again at the end: the cores are shared, and a peak measured while others load them understates it.
        results["gemm_end"] = {kind: _spawn(["--worker", "gemm", kind], args.threads) for kind in GEMM_KINDS}
    results["settings"]["wall_s"] = time.perf_counter() - started
    results["settings"]["load_average"] = {"start": load_start, "end": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimize_variants.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "optimize_variants.md").write_text(render_markdown(results))
    print(args.out / "optimize_variants.md")


# --- report -------------------------------------------------------------------------------------------------------


def _macs(model: str) -> int:
    from vitexport.models import get_spec

    return get_spec(model).macs()


def render_markdown(r: dict) -> str:
    m, s = r["machine"], r["settings"]
    out = [
        "# Optimized variants: speed and accuracy",
        "",
        f"Run {r['date']} by `benchmarks/scripts/optimize_variants.py`; {s['threads']} threads, batches "
        f"{', '.join(map(str, s['batches']))}, {s['duration_s']:g} s timed per variant and batch (median latency), "
        f"each build, variant and GEMM in its own process. Wall time {s.get('wall_s', 0) / 60:.1f} min; load "
        f"average {s['load_average']['start'][0]:.2f} at start, {s['load_average']['end'][0]:.2f} at end.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {', '.join(m['isa'])}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
    ]
    if s.get("note"):
        out += [f"**Note:** {s['note']}", ""]
    end = r.get("gemm_end", {})
    out += [
        "## GEMM peaks (2048^3 MatMul), median GFLOP/s, at the start and at the end of the run",
        "",
        "| kernel | computes in | start | end |",
        "|---|---|---|---|",
    ]
    for kind, g in r["gemm"].items():
        e = end.get(kind, {})
        cells = [f"{x['median_gflops']:.0f}" if "median_gflops" in x else x.get("error", "-") for x in (g, e)]
        out.append(f"| {kind} | {g.get('executes_as', '-')} | {cells[0]} | {cells[1]} |")

    def peak(kinds: list[str]) -> float:
        values = [x.get("median_gflops", 0) for src in (r["gemm"], end) for k, x in src.items() if k in kinds]
        return max(values, default=0)

    fp32_peak = peak([k for k in GEMM_KINDS if k.endswith("f32")])
    bf16_peak = peak([k for k in GEMM_KINDS if k.endswith("bf16")])
    out += [
        "",
        f"Peaks used below: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s (best library, higher "
        "of start and end).",
        "",
    ]
    out += _targets(r, fp32_peak, bf16_peak)

    lc = r.get("labelled_check", {})
    if lc.get("variants"):
        out += [
            f"## Labelled check: `{lc['model']}` trained on scikit-learn digits "
            f"(PyTorch top-1 {lc['pytorch_top1']:.2f}%)",
            "",
            "Top-1/top-5 on the 360 held-out digits, against the fp32 ONNX reference.",
            "",
            "| variant | gate | top-1 % | top-5 % | top-1 drop (pt) | max abs | cosine |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, e in lc["variants"].items():
            if "gate" not in e:
                out.append(f"| {key} | {e.get('error', '?')} | | | | | |")
                continue
            g, acc = e["gate"], e["gate"]["accuracy"]
            img = g["images"][0]
            out.append(
                f"| {key} | {'pass' if g['passed'] else 'FAIL'} | {acc['candidate_top1']:.2f} | "
                f"{acc['candidate_top5']:.2f} | {acc['top1_drop']:+.2f} | {img['max_abs']:.3g} | {img['cosine']:.5f} |"
            )
        out.append("")

    for model, build in r["models"].items():
        out += [f"## {model}", ""]
        if "error" in build:
            out += [f"build failed: {build['error']}", ""]
            continue
        batches = s["batches"]
        gmacs = _macs(model) / 1e9
        head = "| variant | computes in | gate | max abs | cosine | top-1 agree | " + " | ".join(
            f"img/s b{b}" for b in batches
        )
        head += f" | GFLOP/s b{batches[-1]} | % of peak |"
        out += [
            f"Seeded random weights ({gmacs:.2f} GMACs/image); drift against the fp32 ONNX on 52 real images "
            f"(digits, photo crops) and random inputs; build time includes quantization.",
            "",
            head,
            "|" + "---|" * (8 + len(batches)),
        ]
        for key, e in build["variants"].items():
            if "gate" not in e:
                out.append(f"| {key} | | {e.get('error', '?')} |" + " |" * (5 + len(batches)))
                continue
            g = e["gate"]
            img = g["images"][0]
            timing = e.get("timing", {})
            speeds = [timing.get(str(b), {}).get("img_s") for b in batches]
            cells = [
                f"{v:.1f}" if v else timing.get(str(b), {}).get("error", "-")
                for v, b in zip(speeds, batches, strict=True)
            ]
            last = speeds[-1] or 0
            gflops = last * gmacs * 2
            if not last:  # built and gated, not timed
                out.append(
                    f"| {key} | {e['details'].get('executes_as') or e['variant']['precision']} | "
                    f"{'pass' if g['passed'] else 'FAIL: ' + '; '.join(g['failures'])[:80]} | {img['max_abs']:.3g} | "
                    f"{img['cosine']:.5f} | {img['top1_agreement']:.3f} |" + " - |" * (2 + len(batches))
                )
                continue
            computes = e["details"].get("executes_as") or e["variant"]["precision"]
            out.append(
                f"| {key} | {computes} | {'pass' if g['passed'] else 'FAIL: ' + '; '.join(g['failures'])[:80]} | "
                f"{img['max_abs']:.3g} | {img['cosine']:.5f} | {img['top1_agreement']:.3f} | "
                + " | ".join(cells)
                + f" | {gflops:.0f} | {_of_peak(gflops, computes, fp32_peak, bf16_peak)} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def _of_peak(gflops: float, computes: str, fp32_peak: float, bf16_peak: float) -> str:
    """The fraction of the measured GEMM peak of the precision the variant computes in; INT8 and FP16 have no
    measured peak here."""
    peak = {"fp32": fp32_peak, "f32": fp32_peak, "bf16": bf16_peak}.get(computes)
    return f"{100 * gflops / peak:.0f}% {computes}" if peak else "–"


def _best_gated(build: dict, batch: int, computes: tuple[str, ...] | None = None) -> tuple[str, float] | None:
    """(variant, img/s) of the fastest variant that passed its gate at `batch`, among those computing in `computes`."""
    best = None
    for key, e in build.get("variants", {}).items():
        speed = e.get("timing", {}).get(str(batch), {}).get("img_s")
        kind = e.get("details", {}).get("executes_as") or e["variant"]["precision"]
        if speed and e.get("gate", {}).get("passed") and (computes is None or kind in computes):
            best = max(best or (key, 0.0), (key, speed), key=lambda kv: kv[1])
    return best


def _targets(r: dict, fp32_peak: float, bf16_peak: float) -> list[str]:
    """The issue's targets against this run: met or missed, with the figures."""
    out = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    base = r["models"].get("deit_base_patch16_224") or r["models"].get("deit_base")
    batch = max(r["settings"]["batches"])
    if base:
        best = _best_gated(base, batch)
        if best:
            out.append(
                f"| DeiT-B best gated CPU path >= 40 img/s at batch {batch} | {best[1]:.1f} ({best[0]}) | "
                f"{'yes' if best[1] >= 40 else 'no'} |"
            )
        gmacs = _macs("deit_base_patch16_224") / 1e9
        float_best = _best_gated(base, batch, ("bf16", "fp32", "f32"))
        if float_best and bf16_peak:
            share = float_best[1] * gmacs * 2 / bf16_peak
            out.append(
                f"| best BF16/FP32 DeiT-B path >= 95% of the BF16 GEMM peak ({bf16_peak:.0f} GFLOP/s) | "
                f"{100 * share:.0f}% ({float_best[0]}) | {'yes' if share >= 0.95 else 'no'} |"
            )
    lc = r.get("labelled_check", {}).get("variants", {})
    drops = {k: e["gate"]["accuracy"]["top1_drop"] for k, e in lc.items() if e.get("gate", {}).get("accuracy")}
    if drops:
        worst = max(drops, key=drops.get)
        out.append(
            f"| top-1 drop <= 0.3 pt on the labelled check, every variant | worst {drops[worst]:+.2f} pt "
            f"({worst}) | {'yes' if drops[worst] <= 0.3 else 'no'} |"
        )
    return [*out, ""]


if __name__ == "__main__":
    main()
