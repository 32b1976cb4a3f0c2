"""Milliseconds per image of the ways to turn a photograph's bytes into a model's resized pixels (issue 24): Pillow's
full decode + bicubic resize (the exact reference), Pillow's reduced-size JPEG decode (`Image.draft`, libjpeg's DCT
scaling) and `reducing_gap`, OpenCV's reduced decodes, simplejpeg's scaled decode, and pillow-simd where it was
installed; on scikit-image's photographs resized up to 0.3, 2 and 12 MP, as JPEG (q90) and PNG.

Each way resizes to what a classifier at 224 px needs (short side 256, bicubic) and to a DETR's 800 px canvas (long
side 800, bilinear), then normalises into float32; the pixels' worst and mean absolute difference to the exact path
(in [0, 1] units) is reported beside the time. Libraries that are not importable are skipped and named.

    PYTHONPATH=/tmp/pkgs:$PWD .venv/bin/python benchmarks/scripts/image_decode.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vitexport.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"
SIZES = {"0.3 MP": (640, 480), "2 MP": (1600, 1200), "12 MP": (4032, 3024)}
GAP = 2.0  # the reduced decode stays at least this many times the resize's output, so the final filter has support

Way = Callable[[bytes, tuple[int, int], int], np.ndarray]  # (encoded, output (w, h), PIL resample) -> (h, w, 3) uint8


def photo(size: tuple[int, int]) -> np.ndarray:
    """scikit-image's coffee photograph (600 x 400) resized up to `size` with Lanczos: real texture at any size."""
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.coffee()).resize(size, Image.Resampling.LANCZOS))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def pil_exact(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(out, resample))


def pil_draft(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (round(out[0] * GAP), round(out[1] * GAP)))  # JPEG only; a no-op on PNG
    return np.asarray(image.convert("RGB").resize(out, resample))


def pil_draft_gap(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (round(out[0] * GAP), round(out[1] * GAP)))
    return np.asarray(image.convert("RGB").resize(out, resample, reducing_gap=GAP))


def pil_gap(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(out, resample, reducing_gap=GAP))


def _reduction(full: tuple[int, int], out: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps the decoded image at least GAP times the output on both sides."""
    factor = 1
    while factor < 8 and all(f / (factor * 2) >= o * GAP for f, o in zip(full, out, strict=True)):
        factor *= 2
    return factor


def cv2_reduced(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    import cv2

    full = Image.open(io.BytesIO(data)).size  # the header only
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        _reduction(full, out), cv2.IMREAD_REDUCED_COLOR_8
    )
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    interpolation = cv2.INTER_CUBIC if resample == Image.Resampling.BICUBIC else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(bgr, out, interpolation=interpolation), cv2.COLOR_BGR2RGB)


def simplejpeg_scaled(data: bytes, out: tuple[int, int], resample: int) -> np.ndarray:
    import simplejpeg

    if not simplejpeg.is_jpeg(data):
        return pil_gap(data, out, resample)
    decoded = simplejpeg.decode_jpeg(
        data, colorspace="RGB", min_width=round(out[0] * GAP), min_height=round(out[1] * GAP)
    )
    return np.asarray(Image.fromarray(decoded).resize(out, resample))


def normalise(pixels: np.ndarray) -> np.ndarray:
    """The normalisation every way shares: into one preallocated float32 array, in place."""
    x = np.empty(pixels.shape, np.float32)
    np.multiply(pixels, np.float32(1 / 255), out=x)
    x -= np.float32(0.45)
    x /= np.float32(0.225)
    return x


def out_sizes(full: tuple[int, int]) -> dict[str, tuple[tuple[int, int], int]]:
    w, h = full
    short = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    fit = 800 / max(w, h)
    return {
        "classifier 256": (short, Image.Resampling.BICUBIC),
        "detr 800": ((round(w * fit), round(h * fit)), Image.Resampling.BILINEAR),
    }


def time_ms(way: Way, data: bytes, out: tuple[int, int], resample: int, repeats: int) -> tuple[float, np.ndarray]:
    pixels = normalise(way(data, out, resample))  # warm: imports, first allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pixels = normalise(way(data, out, resample))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), pixels


def ways() -> tuple[dict[str, Way], dict[str, str]]:
    # pillow-simd installs as PIL too (put its folder first on PYTHONPATH): its rows are named for it.
    pil = "pillow-simd" if "post" in Image.__version__ else "pillow"
    found: dict[str, Way] = {
        f"{pil} exact": pil_exact,
        f"{pil} draft": pil_draft,
        f"{pil} draft + reducing_gap": pil_draft_gap,
        f"{pil} reducing_gap": pil_gap,
    }
    versions = {pil: Image.__version__}
    try:
        import cv2

        found["opencv reduced"] = cv2_reduced
        versions["opencv-python-headless"] = cv2.__version__
    except ImportError:
        pass
    try:
        import simplejpeg

        found["simplejpeg scaled"] = simplejpeg_scaled
        versions["simplejpeg"] = simplejpeg.__version__
    except ImportError:
        pass
    return found, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default="image_decode")
    args = parser.parse_args()
    found, versions = ways()
    rows = []
    for size_name, full in SIZES.items():
        pixels = photo(full)
        for fmt in ("JPEG", "PNG"):
            data = encode(pixels, fmt)
            for target, (out, resample) in out_sizes(full).items():
                _, reference = time_ms(pil_exact, data, out, resample, 1)  # this Pillow's: pillow-simd's own rows
                for name, way in found.items():
                    ms, got = time_ms(way, data, out, resample, args.repeats)
                    diff = np.abs(got - reference) * np.float32(0.225)  # back to [0, 1] units
                    row = dict(size=size_name, format=fmt, bytes=len(data), target=target, way=name, ms=round(ms, 2))
                    rows.append(
                        row | {"max_diff": round(float(diff.max()), 4), "mean_diff": round(float(diff.mean()), 5)}
                    )
                    print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_info(), "versions": versions, "repeats": args.repeats, "gap": GAP, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.output}.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    rows = result["rows"]
    names = list(dict.fromkeys(r["way"] for r in rows))
    lines = [
        "# The image path: ms per image, decode + resize + normalise (median)",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}; {json.dumps(result['versions'])}; "
        f"{result['repeats']} repeats; reduced decodes keep >= {result['gap']}x the output.",
        "",
        "| photo | target | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    keys = list(dict.fromkeys((r["size"], r["format"], r["target"]) for r in rows))
    for size, fmt, target in keys:
        cells = {r["way"]: r for r in rows if (r["size"], r["format"], r["target"]) == (size, fmt, target)}
        text = [f"{cells[n]['ms']:.1f} ({cells[n]['mean_diff']:.4f})" if n in cells else "" for n in names]
        lines.append(f"| {size} {fmt} | {target} | " + " | ".join(text) + " |")
    lines += ["", "In brackets: the mean absolute pixel difference to pillow exact, in [0, 1] units."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
