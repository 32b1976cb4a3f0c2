"""Served photographs against served tensors (issue 24): the variant `vitexport deploy` chose, served by Triton with
its image ensemble; photographs of 0.3, 2 and 12 MP as JPEG and PNG to `<name>_image` beside the preprocessed
tensors to `<name>`, at concurrency 1 and 8 over gRPC (perf_analyzer), with the ratio, p50/p99, the bytes sent per
image and where the time goes (Triton's per-model statistics). A benchmark, not a test.

    .venv/bin/python benchmarks/scripts/image_path.py deit_small
    .venv/bin/python benchmarks/scripts/image_path.py deit_small --preprocess fast --repo model_repository

The variant: `--artifact FILE`, or deploy's in `--repo` (a repository `vitexport deploy` wrote), or else the model is
deployed as `vitexport deploy` does into the work folder (candidates built, gated on photographs, timed) and that
deployment is reused by the next run. `--preprocess exact|fast` goes to the repository step (the served
preprocessing `repo` would choose: fast only where it passes its gate), so both are measured on the same variant.
The measurement itself is `vitexport bench`'s (vitexport.bench.image_path), so the bench's image-path rows and this
script's agree.
Writes `benchmarks/results/image_path_<model>_<preprocess>[_<tag>].json`, `.md` and `.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vitexport.bench.image_path import ALL_PHOTOS, ImagePathSettings, parse_photos
from vitexport.bench.image_path_report import image_path_markdown, write_plot
from vitexport.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}  {message}", flush=True)


def variant(model: str, artifact: Path | None, repo: Path | None, workdir: Path):
    """(the artifact, how it was chosen)."""
    from vitexport.artifacts import load_artifact
    from vitexport.bench.deployed import find_deployed
    from vitexport.bench.subject import subject

    if artifact is not None:
        return load_artifact(artifact), f"given with --artifact {artifact}"
    name = subject(model).name
    own = workdir / name / "repo"
    for folder in (repo, own):
        found = find_deployed(folder, name, model) if folder else None
        if found is not None:
            return load_artifact(found.path), f"deploy's choice, {folder}/{found.served_as}/{found.version}"
        if folder is repo and repo is not None:
            raise SystemExit(f"{repo} holds no deployed {name}")
    from vitexport.pipeline import deploy

    say(f"{name}: deploying as `vitexport deploy` does, into {own}")
    deployment = deploy(model, repo=own, workdir=workdir / name / "deploy", progress=say)
    return deployment.chosen, f"deploy's choice, made in this run ({own})"


def run(args: argparse.Namespace) -> dict:
    from vitexport.bench.served import ServedSettings, serving

    settings = ImagePathSettings(
        photos=args.photos,
        concurrency=tuple(args.concurrency),
        window_ms=args.window_ms,
        preprocess=args.preprocess,
    )
    artifact, chosen = variant(args.model, args.artifact, args.repo, args.workdir)
    machine = machine_info()
    loads = [os.getloadavg()[0]]
    served = ServedSettings(threads=args.threads)
    with serving(artifact, args.workdir, served, None, None, settings, say) as (urls, name):
        from vitexport.bench.image_path import measure_image_path

        result = measure_image_path(urls["grpc"], name, artifact, settings, args.workdir, say)
    loads.append(os.getloadavg()[0])
    result["variant"] = {
        "runtime": "openvino" if artifact.format == "openvino" else "onnxruntime",
        "precision": str(artifact.precision),
        "artifact": artifact.path.name,
        "gated": artifact.passed_gate,
        "chosen": chosen,
    }
    return {
        "benchmark": "image_path",
        "command": "python benchmarks/scripts/image_path.py " + " ".join(sys.argv[1:]),
        "model": artifact.model,
        "machine": machine,
        "threads": args.threads,
        "note": args.note,
        "load_average": {"start": round(loads[0], 2), "end": round(loads[-1], 2)},
        "image_path": result,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# The image path: {result['model']}",
        "",
        f"`{result['command']}`",
        "",
        f"{m['date']} · {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}) · {result['threads']} threads per "
        f"runtime · load average {result['load_average']['start']} at start, {result['load_average']['end']} at end",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        *([f"**Note:** {result['note']}", ""] if result["note"] else []),
    ]
    lines += image_path_markdown({"models": {result["model"]: {"image_path": result["image_path"]}}})
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model", help="a registered model (deit_small) or an fp32 ONNX artifact")
    parser.add_argument("--preprocess", default=None, help="the repository step's preprocessing mode (exact, fast)")
    parser.add_argument("--repo", type=Path, default=None, help="a repository `vitexport deploy` wrote")
    parser.add_argument("--artifact", type=Path, default=None, help="a variant to serve instead of deploy's")
    parser.add_argument("--photos", type=parse_photos, default=ALL_PHOTOS, help="e.g. 640x480.jpg,4032x3024.png")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--window-ms", type=int, default=ImagePathSettings.window_ms)
    parser.add_argument("--threads", type=int, default=2, help="the served runtime's intra-op threads")
    parser.add_argument("--workdir", type=Path, default=None, help="deployments and photographs [default: cache]")
    parser.add_argument("--note", default="", help="recorded with the result, e.g. the machine's other load")
    parser.add_argument("--tag", default="", help="appended to the result's file name")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.workdir is None:
        from vitexport.bench.bench import default_workdir

        args.workdir = default_workdir().parent / "image_path"
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    args.output.mkdir(parents=True, exist_ok=True)
    parts = ("image_path", result["model"], args.preprocess or "default", args.tag)
    stem = args.output / "_".join(x for x in parts if x)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + f"\n![image path vs tensor path]({stem.name}.png)\n")
    write_plot([(result["model"], {"image_path": result["image_path"]})], stem.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {stem}.json, .md and .png")


if __name__ == "__main__":
    main()
