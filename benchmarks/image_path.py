"""The image path: what users call, encoded photographs to `<name>_image` (decode, resize, normalise in the
preprocessing model, then the model, then its task's post-processing, one Triton ensemble), measured beside the
tensor path (the preprocessed pixels to `<name>`) on the same served variant, in the same server, interleaved.

For each concurrency the tensor path and the photographs alternate (tensor, photograph, tensor, photograph, ...,
tensor): each photograph's reference is the mean of the tensor points just before and after it, so that the shared
machine's load, which moves within minutes, falls on both alike (both tensor points are recorded).
Each point is perf_analyzer (gRPC, one image per request, its time windows) with Triton's statistics read before
and after it, so that where the time went comes from the server's own per-model figures: queue, compute input,
compute infer and compute output of the preprocessing, the model and the post-processing, and the ensemble's total;
the transfer is perf_analyzer's (the client's send and receive, the wire, the front and the gRPC frontends).

The photographs are scikit-image's coffee photograph resized to a phone's sizes (0.3, 2 and 12 MP) with Lanczos and
saved as JPEG (quality 90, 4:2:0, as a phone does) and PNG, written once into the work folder.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitexport.bench.triton_stats import STAGES, model_statistics, per_request
from vitexport.errors import VitExportError

JPEG_QUALITY = 90
SOURCE_PHOTO = "coffee"  # skimage.data's, 600 x 400; the same source as benchmarks/scripts/image_decode.py
PHOTOS_VERSION = 1  # of the recipe above: part of the cache folder's name
EXTENSIONS = {"jpg": "JPEG", "png": "PNG"}
# Stability off: three windows are measured and kept whatever they say (a point costs what its windows cost; the
# spread is recorded). perf_analyzer's own check repeats windows until they agree, minutes on a shared machine.
NO_STABILITY_CHECK = 1000


@dataclass(frozen=True)
class Photo:
    width: int
    height: int
    extension: str  # jpg or png

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}.{self.extension}"

    @classmethod
    def parse(cls, text: str) -> Photo:
        """`640x480.jpg`: one line when it is not that."""
        match = re.fullmatch(r"(\d{2,5})x(\d{2,5})\.(jpg|png)", text.strip())
        if not match:
            raise VitExportError(f"a photograph is WIDTHxHEIGHT.jpg or .png (e.g. 4032x3024.jpg), not {text!r}")
        return cls(int(match[1]), int(match[2]), match[3])


SIZES = ((640, 480), (1600, 1200), (4032, 3024))  # 0.3, 2 and 12 MP: a thumbnail, a web photo, a phone's photo
ALL_PHOTOS = tuple(Photo(w, h, ext) for ext in EXTENSIONS for w, h in SIZES)
QUICK_PHOTOS = (Photo(640, 480, "jpg"), Photo(4032, 3024, "jpg"))


def parse_photos(text: str) -> tuple[Photo, ...]:
    """`--photos 640x480.jpg,4032x3024.png`."""
    photos = tuple(dict.fromkeys(Photo.parse(t) for t in text.split(",") if t.strip()))
    if not photos:
        raise VitExportError("--photos names no photograph")
    return photos


@dataclass(frozen=True)
class ImagePathSettings:
    photos: tuple[Photo, ...] = ALL_PHOTOS
    concurrency: tuple[int, ...] = (1, 8)
    window_ms: int = 1500  # perf_analyzer's window; three are measured per point
    protocol: str = "grpc"
    # The served preprocessing: `fast` (where its gate passes on the model, as `repo` chooses) or `exact`; None: fast.
    preprocess: str | None = None


def photo_bytes(photo: Photo, folder: Path) -> bytes:
    """The encoded photograph, made once into `folder` (a 12 MP PNG takes seconds to compress)."""
    from vitexport.fileio import write_atomic

    cache = folder / f"photos-v{PHOTOS_VERSION}"
    path = cache / photo.name
    if path.is_file():
        return path.read_bytes()
    import numpy as np
    import skimage.data
    from PIL import Image

    source = Image.fromarray(np.asarray(getattr(skimage.data, SOURCE_PHOTO)()))
    image = source.resize((photo.width, photo.height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fmt = EXTENSIONS[photo.extension]
    image.save(buffer, format=fmt, **({"quality": JPEG_QUALITY, "subsampling": "4:2:0"} if fmt == "JPEG" else {}))
    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
    return buffer.getvalue()


# -- perf_analyzer's input files -------------------------------------------------------------------------------


def image_request_json(data: bytes, input_name: str) -> str:
    """perf_analyzer's input-data JSON of one request holding the encoded photograph (a BYTES element as Triton
    serializes it: its length, then the bytes)."""
    from vitexport.serving.samples import serialized

    request = {input_name: {"b64": base64.b64encode(serialized(data)).decode(), "shape": [1]}}
    return json.dumps({"data": [request]}) + "\n"


def tensor_request(config: Any, preprocess: Any) -> tuple[str, int]:
    """perf_analyzer's input-data JSON of one request of the model's tensors as the preprocessing makes them of the
    packaged photograph (a detector's canvas and mask too), and the bytes of tensor data it carries."""
    from vitexport.serving import samples

    tensors = samples.photo_tensors(preprocess)
    text = samples.perf_input(config, tensors)
    request = json.loads(text)["data"][0]
    return text, sum(len(base64.b64decode(t["b64"])) for t in request.values())


# -- the measurement -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What one point sends: to which model, the input file, the bytes of request data per image."""

    label: str  # "tensor" or the photograph's name
    model: str
    input_file: Path
    request_bytes: int


def measure_image_path(
    url: str,
    name: str,
    artifact: Any,
    settings: ImagePathSettings,
    workdir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The image path of the model served as `name` (its ensemble `<name>_image`) on the Triton at the gRPC `url`,
    beside its tensor path: {"settings", "points": [...], "rows": [...]} (rows: one per photograph and concurrency,
    with the ratio to the tensor path)."""
    import tempfile

    import tritonclient.grpc as grpc

    from vitexport.bench.perf_analyzer import find_perf_analyzer
    from vitexport.errors import ServingError

    tool = find_perf_analyzer()
    if tool is None:
        raise ServingError("perf_analyzer is not installed (pip install 'vitexport[serve]')")
    from tritonclient.utils import InferenceServerException

    client = grpc.InferenceServerClient(url)
    try:
        model_config = client.get_model_config(name).config
        image_config = client.get_model_config(f"{name}_image").config
    except InferenceServerException as e:  # e.g. a running server (--triton-url) without the image ensemble
        raise ServingError(f"the image path needs {name} and {name}_image served: {e.message()}") from None
    finally:
        client.close()
    with tempfile.TemporaryDirectory(prefix="vitexport-image-path-") as tmp:
        targets = _targets(Path(tmp), name, model_config, image_config, artifact, settings, workdir)
        points: list[dict[str, Any]] = []
        for c in settings.concurrency:
            # The tensor path between the photographs (and before the first and after the last): each photograph's
            # reference is measured just before and just after it, under the load it ran under.
            for target in [t for photo in targets[1:] for t in (targets[0], photo)] + [targets[0]]:
                progress(f"{artifact.model}: image path, {target.label} at concurrency {c}")
                window = _window_ms(settings.window_ms, target, c, points)
                point = _point(tool, url, target, c, settings, window)
                if not point["stable"]:  # a window held too few answers to report on: once more, longer
                    window = max(2 * window, round(2000 * c / max(point["img_s"], 1e-3)))
                    point = _point(tool, url, target, c, settings, window)
                points.append(point)
    return {"settings": _settings_record(settings), "points": points, "rows": rows_of(points, name)}


def _targets(folder, name, model_config, image_config, artifact, settings, workdir) -> list[_Target]:
    text, tensor_bytes = tensor_request(model_config, artifact.preprocess)
    (folder / "tensor.json").write_text(text)
    targets = [_Target("tensor", name, folder / "tensor.json", tensor_bytes)]
    image_input = image_config.input[0].name
    for photo in settings.photos:
        data = photo_bytes(photo, workdir)
        path = folder / f"{photo.name}.json"
        path.write_text(image_request_json(data, image_input))
        targets.append(_Target(photo.name, f"{name}_image", path, len(data)))
    return targets


def _window_ms(window_ms: int, target: _Target, concurrency: int, earlier: list[dict[str, Any]]) -> int:
    """The point's window: the setting, or long enough for each client to get two answers, from the same target's
    latency at concurrency 1 where that was measured (a 12 MP photograph takes over a second at concurrency 8)."""
    alone = [p for p in earlier if p["path"] == target.label and p["concurrency"] == 1 and p.get("latency_ms_p50")]
    return max(window_ms, round(2 * concurrency * alone[0]["latency_ms_p50"])) if alone else window_ms


def _point(
    tool: Any, url: str, target: _Target, concurrency: int, settings: ImagePathSettings, window_ms: int
) -> dict[str, Any]:
    from vitexport.bench.perf_analyzer import measure

    before = model_statistics(url)
    started = time.perf_counter()
    measured = measure(
        tool,
        url,
        target.model,
        protocol=settings.protocol,
        concurrency=concurrency,
        window_ms=window_ms,
        stability_percent=NO_STABILITY_CHECK,
        max_trials=3,
        timeout_s=600,
        input_data=target.input_file,
    )
    seconds = time.perf_counter() - started
    models = per_request(before, model_statistics(url))
    return {
        "path": target.label,
        "model": target.model,
        "concurrency": concurrency,
        "request_bytes": target.request_bytes,
        **measured,
        "window_ms": window_ms,
        "seconds": round(seconds, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "server": models,
    }


def rows_of(points: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """One row per photograph and concurrency: its throughput and latency beside the tensor path's (the mean of the
    tensor points just before and just after it), the ratio, and where its time went."""
    rows = []
    for i, p in enumerate(points):
        if p["path"] == "tensor":
            continue
        tensors = [points[i - 1], points[i + 1]]
        tensor_img_s = statistics.mean(t["img_s"] for t in tensors)
        tensor_p50 = _mean([t.get("latency_ms_p50") for t in tensors])
        p50 = p.get("latency_ms_p50")
        rows.append(
            {
                "photo": p["path"],
                "concurrency": p["concurrency"],
                "img_s": p["img_s"],
                "tensor_img_s": round(tensor_img_s, 3),
                "tensor_img_s_runs": [t["img_s"] for t in tensors],
                "ratio": round(p["img_s"] / tensor_img_s, 3) if tensor_img_s else None,
                "latency_ms_p50": p50,
                "latency_ms_p99": p.get("latency_ms_p99"),
                "tensor_latency_ms_p50": tensor_p50,
                "p50_minus_tensor_ms": None if p50 is None or tensor_p50 is None else round(p50 - tensor_p50, 1),
                "request_bytes": p["request_bytes"],
                "tensor_request_bytes": tensors[0]["request_bytes"],
                "where": where_the_time_goes(p, name),
            }
        )
    return rows


def where_the_time_goes(point: dict[str, Any], name: str) -> dict[str, float | None]:
    """Milliseconds per request by step, from Triton's statistics: each step's queue and compute (input + infer +
    output) and the ensemble's whole time in the server; and from perf_analyzer's the transfer (the client's
    latency outside the target model's queue and compute)."""
    server = point["server"]

    def step(model: str) -> tuple[float | None, float | None]:
        s = server.get(model)
        if not s:
            return None, None
        return s["queue_ms"], round(s["compute_input_ms"] + s["compute_infer_ms"] + s["compute_output_ms"], 3)

    pre_queue, pre = step(f"{name}_preprocess")
    model_queue, model = step(name)
    post_queue, post = step(f"{name}_postprocess")
    ensemble = server.get(f"{name}_image")
    total = ensemble.get("server_ms") if ensemble else None
    parts = [point.get(k) for k in ("client_send_ms", "network_ms", "client_recv_ms")]
    return {
        "preprocess_queue_ms": pre_queue,
        "preprocess_ms": pre,
        "preprocess_infer_ms": server.get(f"{name}_preprocess", {}).get("compute_infer_ms"),
        "model_queue_ms": model_queue,
        "model_ms": model,
        "model_mean_batch": server.get(name, {}).get("mean_batch"),
        "postprocess_queue_ms": post_queue,
        "postprocess_ms": post,
        "server_ms": total,
        # The ensemble's time that its own counters give no stage (its steps waiting on one another).
        "ensemble_between_steps_ms": None
        if not ensemble
        else round(ensemble["server_ms"] - sum(ensemble[f"{s}_ms"] for s in STAGES), 3),
        # perf_analyzer's split of the client's latency outside the target's queue and compute: the client's send,
        # the wire, the front and the gRPC frontends, its receive. Its average is over its windows, Triton's counters
        # over every request of the point; for an ensemble it also holds the time between the steps above.
        "transfer_ms": None if None in parts else round(sum(parts), 3),  # type: ignore[arg-type]
        "client_send_ms": point.get("client_send_ms"),
        "network_ms": point.get("network_ms"),
        "client_recv_ms": point.get("client_recv_ms"),
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.mean(known), 3) if known else None


def _settings_record(settings: ImagePathSettings) -> dict[str, Any]:
    return {
        "photos": [p.name for p in settings.photos],
        "photo_source": f"skimage.data.{SOURCE_PHOTO}() resized with Lanczos; JPEG quality {JPEG_QUALITY}, 4:2:0",
        "concurrency": list(settings.concurrency),
        "window_ms": settings.window_ms,
        "windows": 3,
        "protocol": settings.protocol,
        "preprocess": settings.preprocess or "fast",
        "response_cache": False,
    }


def repository_options(settings: ImagePathSettings, artifact: Any, progress=lambda _: None) -> dict[str, Any]:
    """add_model's options for the image path: the served preprocessing `repo` and `deploy` would serve (`--preprocess
    fast`, the default: the fast path only where it passes its gate on this model, why not said through `progress`;
    `exact`: the reference)."""
    from vitexport import pipeline

    chosen, note = pipeline.choose_preprocessing(artifact, settings.preprocess or "fast", progress=progress)
    if note:
        progress(note)
    return {"preprocessing": chosen}
