"""The PNG plots of a `vitexport bench` run: throughput vs batch size in-process, served latency vs concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitexport.bench.verdicts import ok


def plots(result: dict[str, Any], output: Path, prefix: str) -> dict[str, str]:
    """Write the PNG plots; returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    models = list(result["models"].items())
    files = {
        "throughput vs batch size": f"{prefix}_throughput.png",
        "latency vs concurrency": f"{prefix}_latency.png",
    }
    draws = [_throughput, _latency]
    if any(m.get("image_path") for _, m in models):
        from vitexport.bench.image_path_report import TITLE, image_path_plot

        files[TITLE] = f"{prefix}_image_path.png"
        draws.append(image_path_plot)
    for draw, file in zip(draws, files.values(), strict=True):
        fig = draw(plt, models)
        fig.tight_layout()
        fig.savefig(output / file, dpi=110)
        plt.close(fig)
    return files


def _throughput(plt: Any, models: list[tuple[str, dict[str, Any]]]) -> Any:
    """One panel per model: img/s against batch size of each in-process path, on log-log axes."""
    cols = min(3, len(models)) or 1
    rows = (len(models) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, model) in zip(axes.flat, models, strict=False):
        for backend, e in model["in_process"].items():
            if not ok(e):
                continue
            xs = sorted(int(b) for b in e["batches"])
            ys = [e["batches"][str(b)]["img_s"] for b in xs]
            style = "--" if e["peer"] else "-" if e.get("gated", True) else ":"
            ax.plot(xs, ys, style, marker="o", label=backend)
        sizes = sorted({int(b) for e in model["in_process"].values() if ok(e) for b in e["batches"]})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # runtimes differ by 10x and more: a linear axis flattens the slow ones
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("img/s")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no in-process measurements", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    fig.suptitle("Throughput vs batch size (solid: ours, dashed: peers, dotted: ungated)", fontsize=11)
    return fig


def _latency(plt: Any, models: list[tuple[str, dict[str, Any]]]) -> Any:
    """One panel per served model: p50 and p99 latency against concurrency, per protocol."""
    served = [(n, m) for n, m in models if m["served"]]
    fig, axes = plt.subplots(1, max(1, len(served)), figsize=(5 * max(1, len(served)), 3.8), squeeze=False)
    for ax, (name, model) in zip(axes.flat, served, strict=False):
        for protocol, points in model["served"].items():
            xs = sorted(int(c) for c in points)
            for key, style in (("latency_ms_p50", "-"), ("latency_ms_p99", ":")):
                ax.plot(xs, [points[str(c)][key] for c in xs], style, marker="o", label=f"{protocol} {key[11:]}")
        ax.set_xticks(xs, [str(c) for c in xs])
        ax.set_title(f"{name} on Triton", fontsize=10)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("latency, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not served:
        axes[0, 0].text(0.5, 0.5, "no served measurements in this run", ha="center", va="center")
        axes[0, 0].axis("off")
    fig.suptitle("Served latency vs concurrency (p50 solid, p99 dotted)", fontsize=11)
    return fig
