"""The image path's table and plot in a `vitexport bench` report, and in benchmarks/scripts/image_path.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TITLE = "image path vs tensor path"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _kb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def image_path_markdown(result: dict[str, Any]) -> list[str]:
    """The image path of each model that has one: every photograph at every concurrency beside the tensor path."""
    models = [(n, m["image_path"]) for n, m in result["models"].items() if m.get("image_path")]
    if not models:
        return []
    s = models[0][1]["settings"]
    out = [
        "## The image path: photographs to `<name>_image`, beside tensors to `<name>`",
        "",
        f"Same served variant, same server, {s['protocol']}, one image per request, perf_analyzer "
        f"({s['windows']} windows of {s['window_ms']} ms per point, longer where a photograph takes over a second); "
        "the tensor path runs just before and just after each photograph (its img/s and p50 are their mean). "
        "Photographs: "
        f"{s['photo_source']}; preprocessing: {s['preprocess']}. Where the time goes, per request, from Triton's "
        "statistics: each step's compute (input + infer + output; its queue apart in the JSON), the ensemble's whole "
        "time in the server, and the transfer (perf_analyzer's client send, network and receive: the wire, the front "
        "and the gRPC frontends; for the ensemble it also holds the time its steps wait on one another, "
        "`ensemble_between_steps_ms` in the JSON, which grows with concurrency). Bytes: the "
        "request's data per image (the encoded photograph; the tensor path's pixels).",
        "",
        "| model | variant | photograph | sent | concurrency | img/s | tensor img/s | image / tensor | p50 ms "
        "| p99 ms | p50 − tensor p50 | preprocess ms | model ms (batch) | server ms | transfer ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, image in models:
        v = image.get("variant") or {}
        variant = f"{v.get('runtime', '?')} {v.get('precision', '?')}" + ("" if v.get("gated") else " (ungated)")
        for r in image["rows"]:
            w = r["where"]
            batch = f" ({w['model_mean_batch']:.1f})" if w.get("model_mean_batch") else ""
            out.append(
                f"| {name} | {variant} | {r['photo']} | {_kb(r['request_bytes'])} | {r['concurrency']} | "
                f"{r['img_s']:.1f} | {r['tensor_img_s']:.1f} | {_fmt(r['ratio'], '.2f')} | "
                f"{_fmt(r['latency_ms_p50'])} | {_fmt(r['latency_ms_p99'])} | "
                f"{_fmt(r['p50_minus_tensor_ms'], '+.1f')} | "
                f"{_fmt(w['preprocess_ms'])} | {_fmt(w['model_ms'])}{batch} | {_fmt(w['server_ms'])} | "
                f"{_fmt(w['transfer_ms'])} |"
            )
        tensor_bytes = image["rows"][0]["tensor_request_bytes"] if image["rows"] else 0
        out += ["", f"{name}: the tensor path sends {_kb(tensor_bytes)} per image."]
    out.append("")
    return out


def image_path_plot(plt: Any, models: list[tuple[str, dict[str, Any]]]) -> Any:
    """One panel per model with an image path: img/s of each photograph against the tensor path, per concurrency."""
    with_image = [(n, m["image_path"]) for n, m in models if m.get("image_path")]
    count = max(1, len(with_image))
    fig, axes = plt.subplots(1, count, figsize=(6 * count, 4), squeeze=False)
    for ax, (name, image) in zip(axes.flat, with_image, strict=False):
        photos = list(dict.fromkeys(r["photo"] for r in image["rows"]))
        concurrencies = list(dict.fromkeys(r["concurrency"] for r in image["rows"]))
        width = 0.8 / max(1, len(concurrencies))
        for i, c in enumerate(concurrencies):
            rows = {r["photo"]: r for r in image["rows"] if r["concurrency"] == c}
            xs = [k + i * width for k in range(len(photos))]
            bars = ax.bar(xs, [rows[p]["img_s"] for p in photos], width, label=f"photographs, concurrency {c}")
            # Each photograph's own tensor reference (the tensor points just before and after it), over its bar.
            tensors = [rows[p]["tensor_img_s"] for p in photos]
            color = bars.patches[0].get_facecolor()
            ax.plot(
                xs, tensors, "_", markersize=22, markeredgewidth=2.5, color=color, label=f"tensors, concurrency {c}"
            )
        ax.set_xticks([k + width * (len(concurrencies) - 1) / 2 for k in range(len(photos))], photos, fontsize=7)
        ax.set_ylabel("img/s")
        ax.set_title(f"{name} on Triton: image bytes vs tensors", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    if not with_image:
        axes[0, 0].text(0.5, 0.5, "no image path in this run", ha="center", va="center")
        axes[0, 0].axis("off")
    return fig


def write_plot(models: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = image_path_plot(plt, models)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
