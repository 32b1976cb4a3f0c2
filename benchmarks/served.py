"""The served path: throughput and p50/p90/p99 latency of a model behind Triton, over gRPC and HTTP, at several
client concurrencies, with perf_analyzer (from the tritonclient 2.51.0 wheel) or, where it cannot run, a
tritonclient load generator.

Each request carries one image; Triton's dynamic batching merges concurrent requests (up to the repository's max
batch size), which is how a served model is used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitexport.bench.perf_analyzer import find_perf_analyzer, measure
from vitexport.errors import ServingError, first_line
from vitexport.tasks.base import PIXELS

if TYPE_CHECKING:
    from vitexport.bench.image_path import ImagePathSettings


@dataclass(frozen=True)
class ServedSettings:
    concurrency: tuple[int, ...] = (1, 4, 8)
    window_ms: int = 2000  # perf_analyzer's measurement interval; it repeats windows until 3 agree
    stability: int = 15  # percent
    max_trials: int = 8
    threads: int = 2  # the served model's intra-op threads


def load_generator(
    url: str,
    model: str,
    protocol: str,
    concurrency: int,
    img_size: int,
    s: ServedSettings,
    input_name: str = PIXELS,
    windows: int = 3,
    mask_name: str | None = None,
) -> dict[str, Any]:
    """perf_analyzer's measurement without it: `concurrency` threads, each with its own client, sending one
    request after another; a warm-up, then `windows` windows; the median window's throughput."""
    from vitexport.serving.client import connect

    x = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size), dtype=np.float32)
    mask = np.ones((1, img_size, img_size), dtype=np.int64)  # a detector's: the whole canvas is image
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client_loop(i: int) -> None:
        client, module = connect(url, protocol)
        tensor = module.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        tensors = [tensor]
        if mask_name is not None:
            tensors.append(module.InferInput(mask_name, list(mask.shape), "INT64"))
            tensors[-1].set_data_from_numpy(mask)
        while not stop.is_set():
            t = time.perf_counter()
            try:
                client.infer(model, tensors)
            except Exception as e:
                errors.append(first_line(e))
                return
            latencies[i].append((time.perf_counter() - t, time.perf_counter()))

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(s.window_ms / 1e3)  # warm-up
    marks = [time.perf_counter()]
    for _ in range(windows):
        time.sleep(s.window_ms / 1e3)
        marks.append(time.perf_counter())
    stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise ServingError(f"{model} refused requests: {errors[0]}")
    return _windows(latencies, marks)


def _windows(latencies: list[list[tuple[float, float]]], marks: list[float]) -> dict[str, Any]:
    """The median window's throughput and the latencies of the requests that ended within the windows (between the
    first and the last mark), from each client's (latency, end time) pairs."""
    done = [(lat, end) for per in latencies for lat, end in per if end >= marks[0]]
    rates = [sum(1 for _, end in done if a <= end < b) / (b - a) for a, b in itertools.pairwise(marks)]
    lat_ms = np.array([lat * 1e3 for lat, end in done if end < marks[-1]])
    return {
        "tool": "tritonclient load generator",
        "img_s": round(float(np.median(rates)), 3),
        "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 3),
        "latency_ms_p90": round(float(np.percentile(lat_ms, 90)), 3),
        "latency_ms_p99": round(float(np.percentile(lat_ms, 99)), 3),
    }


def parse_triton_url(text: str) -> dict[str, str]:
    """HOST:HTTP_PORT:GRPC_PORT -> {"http": HOST:HTTP_PORT, "grpc": HOST:GRPC_PORT}."""
    rest, _, grpc = text.rpartition(":")
    host, _, http = rest.rpartition(":")
    if not (host and http.isdigit() and grpc.isdigit()):
        raise ServingError(f"--triton-url takes HOST:HTTP_PORT:GRPC_PORT, e.g. localhost:8000:8001, not {text!r}")
    return {"http": f"{host}:{http}", "grpc": f"{host}:{grpc}"}


def serve_and_measure(
    artifact_path: Path,
    workdir: Path,
    protocols: Sequence[str],
    settings: ServedSettings,
    *,
    triton_url: str | None = None,
    served_name: str | None = None,
    image_path: ImagePathSettings | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, Any] | None]:
    """Results by protocol and concurrency, and the image path's (`vitexport.bench.image_path`; None when not
    asked for). With `triton_url` (HOST:HTTP_PORT:GRPC_PORT) a running server serving `served_name` (and its
    `_image` ensemble) is measured; otherwise a private server is started on a fresh repository."""
    from vitexport.artifacts import load_artifact

    artifact = load_artifact(artifact_path)
    with serving(artifact, workdir, settings, triton_url, served_name, image_path, progress) as (urls, name):
        results = _measure(urls, name, artifact, protocols, settings, progress) if protocols else {}
        image = None
        if image_path is not None:
            from vitexport.bench.image_path import measure_image_path

            image = measure_image_path(urls["grpc"], name, artifact, image_path, workdir, progress)
        return results, image


@contextlib.contextmanager
def serving(
    artifact, workdir: Path, settings: ServedSettings, triton_url, served_name, image_path, progress
) -> Iterator[tuple[dict[str, str], str]]:
    """(urls by protocol, the served name) of the artifact served: by the running server at `triton_url`, or by a
    private server on a fresh repository, with its image ensemble when the image path is measured."""
    if triton_url:
        yield parse_triton_url(triton_url), served_name or artifact.model
        return
    from vitexport.bench.image_path import repository_options
    from vitexport.serving.config import ServingBackend
    from vitexport.serving.repository import add_model
    from vitexport.serving.server import TritonServer

    repo = Path(tempfile.mkdtemp(prefix="repo-", dir=workdir))
    try:
        name = "classifier"
        added = add_model(
            repo, artifact, backend=ServingBackend.for_format(artifact.format), name=name,
            ensemble=image_path is not None, intra_op_threads=settings.threads,
            require_gate=False,  # the report labels ungated variants
            **(repository_options(image_path, artifact, progress) if image_path else {}),
        )  # fmt: skip
        progress(f"{artifact.model}: starting Triton")
        with TritonServer(repo, models=list(added.models)) as server:
            assert server.endpoints is not None
            yield {"http": server.endpoints.http, "grpc": server.endpoints.grpc}, name
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def _measure(urls, name, artifact, protocols, settings, progress) -> dict[str, dict[int, dict[str, Any]]]:
    tool = find_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="vitexport-pa-data-") as data:
        input_data = _detector_inputs(Path(data), artifact) if artifact.mask_name else None
        return _measure_points(tool, urls, name, artifact, protocols, settings, progress, input_data)


def _detector_inputs(folder: Path, artifact) -> Path:
    """perf_analyzer's input folder for a detector: one raw file per input, named after it. Zero images as for the
    classifiers, but an all-ones mask: perf_analyzer's zeros would mark the whole canvas as padding."""
    size = artifact.preprocess.input_size
    (folder / artifact.input_name).write_bytes(np.zeros((3, size, size), np.float32).tobytes())
    (folder / artifact.mask_name).write_bytes(np.ones((size, size), np.int64).tobytes())
    return folder


def _measure_points(tool, urls, name, artifact, protocols, settings, progress, input_data):
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for protocol in protocols:
        results[protocol] = {}
        for c in settings.concurrency:
            progress(f"{artifact.model}: Triton {protocol}, concurrency {c}")
            point = None
            if tool is not None:
                try:
                    point = measure(
                        tool,
                        urls[protocol],
                        name,
                        protocol=protocol,
                        concurrency=c,
                        window_ms=settings.window_ms,
                        stability_percent=settings.stability,
                        max_trials=settings.max_trials,
                        timeout_s=600,
                        input_data=input_data,
                    )
                    if not point["stable"]:  # the load generator measures what perf_analyzer could not settle
                        raise ServingError("its measurement windows never agreed within the stability bound")
                except (ServingError, subprocess.TimeoutExpired, StopIteration, KeyError) as e:
                    note = first_line(e)
                    point = None
                    fallback_reason = f"perf_analyzer: {note}"
            if point is None:
                size = artifact.preprocess.input_size
                point = load_generator(
                    urls[protocol], name, protocol, c, size, settings, artifact.input_name, mask_name=artifact.mask_name
                )
                if tool is not None:
                    point["note"] = fallback_reason
            point["load_average"] = round(os.getloadavg()[0], 2)
            results[protocol][c] = point
    return results
