"""First-request latency of a served model with and without the `model_warmup` that `vitexport repo` writes: the same
repository served with the warmup samples and with them removed from every config, each started `--rounds` times;
per start, the first and second request to the image ensemble (the photograph's JPEG over HTTP) and then to the model
(its pixels), and how long the start took (warmup moves the first request's cost into it). A benchmark, not a test.

    .venv/bin/python benchmarks/scripts/warmup_latency.py deit_tiny_patch16_224 --rounds 3

The model is exported with random weights (latency does not depend on them) into a cache folder.
Writes `benchmarks/results/warmup_latency_<model>.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vitexport.bench.machine import machine_info
from vitexport.preprocess import PreprocessConfig
from vitexport.serving import config as cfg
from vitexport.serving import samples
from vitexport.serving.repository import add_model, scan
from vitexport.serving.server import TritonServer

RESULTS = Path(__file__).resolve().parents[1] / "results"


def repositories(model: str, workdir: Path) -> dict[str, Path]:
    """The model and its ensemble as `repo` writes them ("warmup"), and a copy without any model_warmup ("none")."""
    from vitexport.export.onnx import export_onnx

    artifact = export_onnx(model, workdir / f"{model}.onnx")
    out = {}
    for kind in ("warmup", "none"):
        repo = workdir / f"repo_{kind}"
        if not repo.exists():
            add_model(repo, artifact, name="m")
            if kind == "none":
                for name, config in scan(repo).items():
                    config.ClearField("model_warmup")
                    (repo / name / "config.pbtxt").write_text(cfg.render(config))
        out[kind] = repo
    return out


def one_start(repo: Path) -> dict[str, float]:
    import tritonclient.http as httpclient

    started = time.perf_counter()
    with TritonServer(repo, startup_timeout=600) as server:
        times = {"start_s": time.perf_counter() - started}
        client = httpclient.InferenceServerClient(server.endpoints.http)
        image = httpclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[samples.PHOTO.read_bytes()]], dtype=np.object_))
        config = scan(repo)["m"]
        preprocess = PreprocessConfig.from_dict(json.loads(cfg.parameter(config, "vitexport_preprocess") or "{}"))
        (pixels_array,) = samples.photo_tensors(preprocess)
        pixels = httpclient.InferInput(config.input[0].name, [1, *pixels_array.shape], "FP32")
        pixels.set_data_from_numpy(pixels_array[None])
        for what, model, inputs in (("ensemble", "m_image", [image]), ("model", "m", [pixels])):
            for nth in ("first", "second"):
                t = time.perf_counter()
                client.infer(model, inputs)
                times[f"{what}_{nth}_ms"] = (time.perf_counter() - t) * 1e3
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="deit_tiny_patch16_224")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.gettempdir()) / f"vitexport-warmup-{args.model}"
    workdir.mkdir(exist_ok=True)
    repos = repositories(args.model, workdir)
    runs = {kind: [one_start(repo) for _ in range(args.rounds)] for kind, repo in repos.items()}
    medians = {kind: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} for kind, rs in runs.items()}
    result = {"model": args.model, "rounds": args.rounds, "machine": machine_info(), "median": medians, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"warmup_latency_{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = list(medians["warmup"])
    print("| model_warmup | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for kind in ("none", "warmup"):
        print(f"| {kind} | " + " | ".join(f"{medians[kind][k]:g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
