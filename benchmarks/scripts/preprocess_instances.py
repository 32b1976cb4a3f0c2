"""Served image throughput and latency of one model's `<name>_image` ensemble with 1 or 2 preprocessing instances, and
with the fast or the exact preprocessing (issue 24: the instances sized for the machine). One real Triton serves every
variant, each its own ensemble over its own copy of the model; each is asked in turn by `--concurrency` gRPC clients
in threads for `--seconds`, with a 640x480 and a 12 MP JPEG (photos.sized_photos).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scripts/preprocess_instances.py [--model deit_small_patch16_224]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vitexport.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"
VARIANTS = {"fast_i1": (True, 1), "fast_i2": (True, 2), "exact_i1": (False, 1), "exact_i2": (False, 2)}


def load(url: str, model: str, data: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    import tritonclient.grpc as grpc

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        client = grpc.InferenceServerClient(url)
        tensor = grpc.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        while time.perf_counter() < stop:
            start = time.perf_counter()
            client.infer(model, [tensor])
            with lock:
                latencies.append(time.perf_counter() - start)

    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    begin = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - begin
    return {"img_s": round(len(latencies) / wall, 2), "p50_ms": round(statistics.median(latencies) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    from vitexport.export.onnx import export_onnx
    from vitexport.export.photos import sized_photos
    from vitexport.preprocess import ServedPreprocessing
    from vitexport.serving.repository import add_model
    from vitexport.serving.server import TritonServer

    photos = dict(sized_photos())
    images = {"640x480 JPEG": photos["chelsea-0.3MP.jpeg"], "12 MP JPEG": photos["chelsea-12MP.jpeg"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_onnx(args.model, Path(tmp) / "model.onnx")
        repo = Path(tmp) / "repo"
        for name, (fast, instances) in VARIANTS.items():
            served = ServedPreprocessing(fast=fast)
            add_model(repo, artifact, name=name, preprocessing=served, preprocess_instances=instances)
        with TritonServer(repo, startup_timeout=600) as server:
            for image, data in images.items():
                for concurrency in args.concurrency:
                    for name in VARIANTS:
                        load(server.endpoints.grpc, f"{name}_image", data, concurrency, 2.0)  # warm
                        row = {"image": image, "concurrency": concurrency, "variant": name}
                        rows.append(row | load(server.endpoints.grpc, f"{name}_image", data, concurrency, args.seconds))
                        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_info(), "model": args.model, "seconds": args.seconds, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preprocess_instances.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
