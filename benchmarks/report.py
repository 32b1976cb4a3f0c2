"""Reports of a `vitexport bench` run: the JSON result (everything), a Markdown page of tables, and PNG plots
(throughput vs batch size, served latency vs concurrency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The DeiT paper's Table 1 throughput (img/s, one 16 GB V100, largest batch, 224 px), with its ratio to ResNet-50.
PAPER_V100 = {
    "deit_tiny_patch16_224": 2536,
    "deit_small_patch16_224": 940,
    "deit_base_patch16_224": 292,
    "resnet50": 1226,
    "resnet101": 754,
    "resnet152": 526,
}
PAPER_NAMES = {
    "deit_tiny_patch16_224": "DeiT-Ti",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "resnet152": "ResNet-152",
}
REFERENCE_MODEL = "resnet50"
# The Swin paper's Table 1(a) throughput (img/s, one V100, measured with timm's code, as the paper says),
# with its ratio to DeiT-S: at 224 px, and the 384 px pair Swin-B / ViT-B/16.
SWIN_PAPER_V100 = {
    "swin_tiny_patch4_window7_224": 755.2,
    "swin_small_patch4_window7_224": 436.9,
    "swin_base_patch4_window7_224": 278.1,
    "deit_small_patch16_224": 940.4,
    "deit_base_patch16_224": 292.3,
    "swin_base_patch4_window12_384": 84.7,
    "vit_base_patch16_384": 85.9,
}
SWIN_PAPER_NAMES = {
    "swin_tiny_patch4_window7_224": "Swin-T",
    "swin_small_patch4_window7_224": "Swin-S",
    "swin_base_patch4_window7_224": "Swin-B",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "swin_base_patch4_window12_384": "Swin-B 384²",
    "vit_base_patch16_384": "ViT-B/16 384²",
}
SWIN_REFERENCE = "deit_small_patch16_224"
# The DETR paper's Table 1 (frames per second on one V100, one image at a time, COCO val images of about 800 x 1200;
# GFLOPs counted by fvcore, one multiply-add as one FLOP, over the first 100 of them), ratios to DETR-R50.
DETR_PAPER_V100 = {"detr_resnet50": 28, "detr_resnet101": 20, "faster_rcnn_r50_fpn": 26}
DETR_PAPER_GFLOPS = {"detr_resnet50": 86, "detr_resnet101": 152, "faster_rcnn_r50_fpn": 180}
DETR_PAPER_NAMES = {
    "detr_resnet50": "DETR-R50",
    "detr_resnet101": "DETR-R101",
    "faster_rcnn_r50_fpn": "Faster RCNN-FPN R50",
}
DETR_REFERENCE = "detr_resnet50"
DETR_BATCH = "1"  # the paper's frames per second are one image at a time
# The one-backend column of the paper table (ratios that do not mix runtimes): the first of these measured for
# every model of the run.
SAME_BACKENDS = ("onnxruntime", "onnxruntime-plain", "torch")


def _ok(entry: dict[str, Any]) -> bool:
    return entry.get("status") == "ok" and bool(entry.get("batches"))


def best_gated(model: dict[str, Any], bs: str) -> tuple[str, float] | None:
    """Our fastest gated in-process path at this batch size (peers and served paths excluded)."""
    best = None
    for name, e in model["in_process"].items():
        if _ok(e) and e.get("gated", not e["peer"]) and bs in e["batches"]:
            rate = e["batches"][bs]["img_s"]
            if best is None or rate > best[1]:
                best = (name, rate)
    return best


def verdicts(result: dict[str, Any]) -> list[str]:
    """Plain sentences: where a peer beats our best gated path, and where it does not."""
    lines = []
    for name, model in result["models"].items():
        sizes = sorted({bs for e in model["in_process"].values() if _ok(e) for bs in e["batches"]}, key=int)
        for bs in sizes:
            ours = best_gated(model, bs)
            peers = [
                (p, e["batches"][bs]["img_s"])
                for p, e in model["in_process"].items()
                if _ok(e) and e["peer"] and bs in e["batches"]
            ]
            if not peers:
                continue
            top_peer = max(peers, key=lambda p: p[1])
            if ours is None:
                lines.append(
                    f"{name}, batch {bs}: no gated path was measured; the best peer is {top_peer[0]} "
                    f"({top_peer[1]:.1f} img/s)."
                )
                continue
            beaten = [p for p in peers if p[1] > ours[1]]
            if beaten:
                who = ", ".join(f"{p} ({r:.1f} img/s)" for p, r in sorted(beaten, key=lambda p: -p[1]))
                lines.append(
                    f"**{name}, batch {bs}: a peer beats our best gated path** {ours[0]} ({ours[1]:.1f} img/s): {who}."
                )
            else:
                lines.append(
                    f"{name}, batch {bs}: our best gated path {ours[0]} ({ours[1]:.1f} img/s) beats every peer "
                    f"(best peer {top_peer[0]}, {top_peer[1]:.1f} img/s; x{ours[1] / top_peer[1]:.2f})."
                )
    return lines


def paper_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The DeiT paper's throughput table, measured here: at the largest batch size, our best gated path per model
    and, for ratios within one runtime, the onnxruntime fp32 path; the paper's V100 figures beside them."""
    return _paper_rows(result, PAPER_V100, PAPER_NAMES, REFERENCE_MODEL, "resnet50")


def swin_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The Swin paper's Table 1(a) throughput, measured here, as `paper_table` does for the DeiT paper's: ratios
    to DeiT-S measured in the same run, the paper's V100 ratios to its DeiT-S beside them. Only the run's models
    that are in the paper's table get a row (and the paper's rows that were not run, so the table keeps its form)."""
    return _paper_rows(result, SWIN_PAPER_V100, SWIN_PAPER_NAMES, SWIN_REFERENCE, "deit_s")


def detr_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The DETR paper's Table 1, measured here: frames per second at batch 1 on the fixed 800 x 800 canvas, as ratios
    to DETR-R50 measured in the same run, the paper's V100 figures and ratios beside them. Faster R-CNN is the
    paper's row only (torchvision's detectors cannot run here: its CPU build for this torch is not on PyPI)."""
    rows = _paper_rows(result, DETR_PAPER_V100, DETR_PAPER_NAMES, DETR_REFERENCE, "detr_r50", batch=DETR_BATCH)
    names = {v: k for k, v in DETR_PAPER_NAMES.items()}
    for r in rows:
        key = names.get(r["model"], r["model"])
        r["paper_gflops"] = DETR_PAPER_GFLOPS.get(key)
        r["gflop_per_image"] = result["models"].get(key, {}).get("gflop_per_image")
    return rows


def _paper_rows(
    result: dict[str, Any],
    paper_v100: dict[str, float],
    paper_names: dict[str, str],
    reference: str,
    suffix: str,
    batch: str | None = None,
) -> list[dict[str, Any]]:
    rows = []
    models = result["models"]
    ref = models.get(reference)
    bs = batch or str(max(result["settings"]["batch_sizes"]))
    # The DeiT table lists every classifier of the run; the Swin and DETR tables only their paper's models.
    if reference == REFERENCE_MODEL:
        listed = {n: m for n, m in models.items() if m.get("task", "classification") == "classification"}
    else:
        listed = {n: m for n, m in models.items() if n in paper_v100}
    same_backend = next(
        (
            b
            for b in SAME_BACKENDS
            if all(_ok(m["in_process"].get(b, {})) and bs in m["in_process"][b]["batches"] for m in listed.values())
        ),
        SAME_BACKENDS[0],
    )
    ref_best = best_gated(ref, bs) if ref else None
    ref_same = ref["in_process"].get(same_backend, {}) if ref else {}
    ref_same_rate = ref_same["batches"][bs]["img_s"] if _ok(ref_same) and bs in ref_same["batches"] else None
    for name, m in listed.items():
        best = best_gated(m, bs)
        same = m["in_process"].get(same_backend, {})
        same_rate = same["batches"][bs]["img_s"] if _ok(same) and bs in same["batches"] else None
        paper = paper_v100.get(name)
        rows.append(
            {
                "model": paper_names.get(name, name),
                "params_m": round(m["params"] / 1e6, 1),
                "resolution": m["resolution"],
                "batch_size": int(bs),
                "best_backend": best[0] if best else None,
                "best_img_s": best[1] if best else None,
                f"best_ratio_to_{suffix}": round(best[1] / ref_best[1], 4) if best and ref_best else None,
                "same_backend": same_backend,
                "same_backend_img_s": same_rate,
                f"same_backend_ratio_to_{suffix}": round(same_rate / ref_same_rate, 4)
                if same_rate and ref_same_rate
                else None,
                "paper_v100_img_s": paper,
                f"paper_ratio_to_{suffix}": round(paper / paper_v100[reference], 4) if paper else None,
            }
        )
    for name, paper in paper_v100.items():  # the paper's other rows, so the table keeps its form
        if name not in models:
            rows.append(
                {
                    "model": paper_names[name],
                    "measured": False,
                    "batch_size": int(bs),
                    "paper_v100_img_s": paper,
                    f"paper_ratio_to_{suffix}": round(paper / paper_v100[reference], 4),
                }
            )
    return rows


def swin_table_notes(rows: list[dict[str, Any]], tolerance: float = 0.15) -> list[str]:
    """Plain sentences comparing each measured ratio to DeiT-S (one runtime, then our best gated paths) with the
    paper's V100 ratio: "differs" when they are more than `tolerance` apart, relative to the paper's."""
    notes = []
    for r in rows:
        paper = r.get("paper_ratio_to_deit_s")
        if r.get("measured") is False or paper is None or r["model"] == SWIN_PAPER_NAMES[SWIN_REFERENCE]:
            continue
        parts = []
        for label, key in ((r["same_backend"], "same_backend_ratio_to_deit_s"), ("best gated", "best_ratio_to_deit_s")):
            ours = r.get(key)
            if ours is None:
                parts.append(f"{label}: no ratio measured")
                continue
            change = ours / paper - 1
            verdict = (
                "as on the V100"
                if abs(change) <= tolerance
                else f"{'faster' if change > 0 else 'slower'} relative to DeiT-S than on the V100 "
                f"({change * 100:+.0f}%)"
            )
            parts.append(f"{label} {ours:.2f} vs paper {paper:.2f}, {verdict}")
        notes.append(f"{r['model']}: " + "; ".join(parts) + ".")
    return notes


def _kind(entry: dict[str, Any]) -> str:
    if entry["peer"]:
        return "peer"
    return "ours" if entry.get("gated", True) else "ours, ungated"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    m, s = result["machine"], result["settings"]
    sizes = [str(b) for b in s["batch_sizes"]]
    out = [
        "# " + result.get("title", "`vitexport bench` results"),
        "",
        f"`{result['command']}`",
        "",
        f"{m['date']} · {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory_gb']} GB · "
        f"{s['threads']} threads · load average {result['load_average']['start']} at start, "
        f"{result['load_average']['end']} at end, {result['load_average']['max']} at most",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"Settings: batch sizes {', '.join(sizes)}; {s['windows']} measured windows of {s['duration']} s after "
        f"{s['warmup']} s of warm-up per point, "
        + s.get("interleaved", "interleaved across backends, each backend in its own process")
        + " (ONNX Runtime spinning off); img/s is the median window, ± the spread (max - min) / median. "
        "Weights are random (no download here): speed does not depend on them."
        + (
            ""
            if s["validate"]
            else " Artifacts were not validated in this run: variants made anew here are shown ungated "
            "(those reused from the cache keep the gate verdict of their sidecar)."
        ),
        "",
    ]
    if result["peaks"]:
        size = next((p["size"] for p in result["peaks"].values() if "size" in p), "?")
        out += [
            f"## GEMM peaks ({size}³ matmul)",
            "",
            "| library | precision | GFLOP/s (int8: GOP/s), best window | median | spread |",
            "|---|---|---:|---:|---:|",
        ]
        for name, p in result["peaks"].items():
            if p["status"] == "ok":
                out.append(
                    f"| {name} | {p['precision']} | {p['gflops']:.0f} | {p['gflops_median']:.0f} | "
                    f"{p['spread'] * 100:.0f}% |"
                )
            else:
                out.append(f"| {name} | {p.get('precision', '')} | – | – | {p['reason']} |")
        peaks = ", ".join(
            f"{k} {v:.0f} {'GOP/s' if k == 'int8' else 'GFLOP/s'}" for k, v in result["peak_gflops"].items()
        )
        out += [
            "",
            f'Peak by precision (best library, best window): {peaks}. A model row\'s "of peak" divides its '
            "operations per second (2 x MACs per image) by the peak of the precision it runs in: INT8 rows by the "
            "int8 peak.",
            "",
        ]

    out += ["## Throughput in-process (img/s)", ""]
    big = sizes[-1]
    header = ["model", "backend", "kind", "precision", *(f"batch {b}" for b in sizes)]
    header += [f"latency p50 ms (batch {sizes[0]})", f"GFLOP/s (batch {big})", "of peak"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(sizes) + 3)]
    for name, model in result["models"].items():
        for backend, e in model["in_process"].items():
            if not _ok(e):
                continue
            cells = []
            for b in sizes:
                r = e["batches"].get(b)
                cells.append(f"{r['img_s']:.1f} ±{r['spread'] * 100:.0f}%" if r else "–")
            first, last = e["batches"].get(sizes[0]), e["batches"].get(big)
            frac = last.get("fraction_of_peak") if last else None
            gflops = last["gflops"] if last else None
            gflops_text = _fmt(gflops, ".0f" if (gflops or 0) >= 100 else ".3g")
            label = (
                f"{backend} ({e['peer_model']})" if e.get("peer_model", f"timm {name}") != f"timm {name}" else backend
            )
            out.append(
                f"| {name} | {label} | {_kind(e)} | {e['precision']} | "
                + " | ".join(cells)
                + f" | {_fmt(first and first['latency_ms_p50'])} | {gflops_text} | "
                # Two significant digits for the tiny test models' small fractions; whole percent from 10% up
                # (".2g" would print 105% as "1e+02%").
                + ("–" if frac is None else f"{frac * 100:.2g}%" if frac < 0.1 else f"{frac * 100:.0f}%")
                + " |"
            )
    out.append("")

    rows = result["paper_table"]
    if any(r.get("measured") is not False for r in rows):
        bs = rows[0]["batch_size"]
        title = f"## The DeiT paper's throughput table, measured here (batch {bs}, {s['threads']} CPU threads)"
        out += [*_paper_markdown(title, rows, baseline="resnet50", label="ResNet-50", paper_img_s="d"), ""]

    out += _swin_markdown(result)
    out += _detr_markdown(result)

    served = [
        (n, p, c, r) for n, mo in result["models"].items() for p, pts in mo["served"].items() for c, r in pts.items()
    ]
    if served:
        out += [
            "## Served through Triton (one image per request, dynamic batching)",
            "",
            "Each model serves one variant: the one `vitexport deploy` would choose (its runtime and precision in the "
            "variant column; why it was chosen in bench.json's `variant.chosen`). In-process is the same variant at "
            "batch = concurrency, where this run measured that batch.",
            "",
            "| model | variant | protocol | concurrency | img/s | in-process img/s | served / in-process | p50 ms "
            "| p90 ms | p99 ms | tool |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for n, p, c, r in served:
            v = r.get("variant") or {}
            variant = f"{v.get('runtime', '?')} {v.get('precision', '?')}" + ("" if v.get("gated") else " (ungated)")
            out.append(
                f"| {n} | {variant} | {p} | {c} | {r['img_s']:.1f} | {_fmt(r.get('in_process_img_s'), '.1f')} | "
                f"{_fmt(r.get('served_over_in_process'), '.2f')} | {r['latency_ms_p50']:.1f} | "
                f"{r['latency_ms_p90']:.1f} | {r['latency_ms_p99']:.1f} | {r['tool']} |"
            )
        out.append("")

    out += ["## Peers against our best gated path", ""]
    out += [f"- {line}" for line in result["verdicts"]] or ["- no peer was measured"]
    out.append("")
    skipped = [
        (n, b, e["reason"]) for n, mo in result["models"].items() for b, e in mo["in_process"].items() if not _ok(e)
    ]
    skipped += [
        (n, b, reason) for n, mo in result["models"].items() for b, reason in mo.get("served_skipped", {}).items()
    ]
    skipped += [
        (n, b, e["note"]) for n, mo in result["models"].items() for b, e in mo["in_process"].items() if e.get("note")
    ]
    failed_gate = [
        (n, b, e["gate_failure"])
        for n, mo in result["models"].items()
        for b, e in mo["in_process"].items()
        if e.get("gate_failure")
    ]
    if failed_gate:
        out += [
            "## Measured without the accuracy gate",
            "",
            "These variants failed their gate (random weights here: near-uniform logits make top-1 agreement "
            'fragile), so they are shown as "ours, ungated" and never count as our best gated path.',
            "",
            "| model | backend | gate verdict |",
            "|---|---|---|",
        ]
        out += [f"| {n} | {b} | {r} |" for n, b, r in failed_gate]
        out.append("")
    if skipped:
        out += ["## Not measured", "", "| model | backend | why |", "|---|---|---|"]
        out += [f"| {n} | {b} | {r} |" for n, b, r in skipped]
        out.append("")
    out += [f"![{title}]({file})" for title, file in plots.items()]
    return "\n".join(out) + "\n"


def _paper_markdown(
    title: str, rows: list[dict[str, Any]], *, baseline: str, label: str, intro: str = "", paper_img_s: str = ".1f"
) -> list[str]:
    """A paper's throughput table beside ours: img/s of the best gated path and of one backend for every model,
    each as a ratio to `label` (row keys `*_ratio_to_{baseline}`) from the same run, the paper's figures beside."""
    same = next((r["same_backend"] for r in rows if "same_backend" in r), SAME_BACKENDS[0])
    out = [title, "", *([intro, ""] if intro else [])]
    out += [
        f"| model | params | image size | img/s, best gated path | ratio to {label} "
        f"| img/s, {same} | ratio | paper V100 img/s | paper ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        paper_ratio = r[f"paper_ratio_to_{baseline}"]
        if r.get("measured") is False:
            out.append(f"| {r['model']} | | | not in this run | | | | {r['paper_v100_img_s']} | {paper_ratio:.2f} |")
            continue
        best = f"{r['best_img_s']:.1f} ({r['best_backend']})" if r["best_img_s"] else "–"
        out.append(
            f"| {r['model']} | {r['params_m']}M | {r['resolution']}² | {best} | "
            f"{_fmt(r[f'best_ratio_to_{baseline}'], '.2f')} | {_fmt(r['same_backend_img_s'])} | "
            f"{_fmt(r[f'same_backend_ratio_to_{baseline}'], '.2f')} | {_fmt(r['paper_v100_img_s'], paper_img_s)} | "
            f"{_fmt(paper_ratio, '.2f')} |"
        )
    return out


def _swin_markdown(result: dict[str, Any]) -> list[str]:
    """The Swin paper's table, when the run has any of its models (computed from the result when an older result
    has none stored, so that re-rendering a saved result shows it too)."""
    rows = result.get("swin_table") or swin_table(result)
    if not any(r.get("measured") is not False for r in rows):
        return []
    bs, threads = rows[0]["batch_size"], result["settings"]["threads"]
    title = f"## The Swin paper's throughput table (Table 1(a)), measured here (batch {bs}, {threads} CPU threads)"
    out = _paper_markdown(
        title,
        rows,
        baseline="deit_s",
        label="DeiT-S",
        intro="Ratios are to DeiT-S measured in this run; the paper's are to its DeiT-S on one V100.",
    )
    notes = swin_table_notes(rows)
    return [*out, "", *(f"- {n}" for n in notes), *([""] if notes else [])]


def _detr_markdown(result: dict[str, Any]) -> list[str]:
    """The DETR paper's table, when the run has any of its models (computed from the result when an older result has
    none stored)."""
    rows = result.get("detr_table") or detr_table(result)
    measured = [r for r in rows if r.get("measured") is not False]
    if not measured:
        return []
    threads = result["settings"]["threads"]
    flops = "; ".join(
        f"{r['model']} {r['gflop_per_image']:.0f} GFLOP here (2 per multiply-add, 800 x 800), the paper's "
        f'{r["paper_gflops"]} "GFLOPs" being fvcore\'s multiply-adds at about 800 x 1200'
        for r in measured
        if r.get("gflop_per_image") and r.get("paper_gflops")
    )
    intro = (
        "Frames per second, one image at a time (batch 1), on the fixed 800 x 800 canvas; the paper's on one V100 "
        "over COCO val images of about 800 x 1200. Ratios are to DETR-R50 measured in this run. "
        + (f"Work per image: {flops}. " if flops else "")
        + "Faster R-CNN-FPN is the paper's row only: torchvision's detectors do not run here."
    )
    title = f"## The DETR paper's Table 1, measured here (batch 1, {threads} CPU threads)"
    return [*_paper_markdown(title, rows, baseline="detr_r50", label="DETR-R50", intro=intro), ""]


def plots(result: dict[str, Any], output: Path, prefix: str) -> dict[str, str]:
    """Write the PNG plots; returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    models = list(result["models"].items())
    cols = min(3, len(models)) or 1
    rows = (len(models) + cols - 1) // cols or 1
    files = {}

    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, model) in zip(axes.flat, models, strict=False):
        for backend, e in model["in_process"].items():
            if not _ok(e):
                continue
            xs = sorted(int(b) for b in e["batches"])
            ys = [e["batches"][str(b)]["img_s"] for b in xs]
            style = "--" if e["peer"] else "-" if e.get("gated", True) else ":"
            ax.plot(xs, ys, style, marker="o", label=backend)
        sizes = sorted({int(b) for e in model["in_process"].values() if _ok(e) for b in e["batches"]})
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
    fig.tight_layout()
    files["throughput vs batch size"] = f"{prefix}_throughput.png"
    fig.savefig(output / files["throughput vs batch size"], dpi=110)
    plt.close(fig)

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
    fig.tight_layout()
    files["latency vs concurrency"] = f"{prefix}_latency.png"
    fig.savefig(output / files["latency vs concurrency"], dpi=110)
    plt.close(fig)
    return files


def write(result: dict[str, Any], output: Path, prefix: str = "bench") -> dict[str, Path]:
    """JSON, Markdown and PNGs into `output`; returns their paths."""
    from vitexport.fileio import write_atomic

    output.mkdir(parents=True, exist_ok=True)
    pngs = plots(result, output, prefix)
    paths = {"json": output / f"{prefix}.json", "markdown": output / f"{prefix}.md"}
    write_atomic(paths["json"], json.dumps(result, indent=2) + "\n")
    write_atomic(paths["markdown"], markdown(result, pngs))
    return paths | {title: output / f for title, f in pngs.items()}


def main() -> None:
    """Re-render the Markdown and PNGs of a saved result without measuring again:
    `python -m vitexport.bench.report benchmarks/results/bench.json`."""
    import sys

    source = Path(sys.argv[1])
    write(json.loads(source.read_text()), source.parent, source.stem)


if __name__ == "__main__":
    main()
