"""Reports of a `vitexport bench` run: the JSON result (everything), a Markdown page of tables, and PNG plots
(throughput vs batch size, served latency vs concurrency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitexport.bench.image_path_report import image_path_markdown
from vitexport.bench.paper_tables import SAME_BACKENDS, detr_table, paper_table, swin_table, swin_table_notes
from vitexport.bench.plots import plots
from vitexport.bench.verdicts import best_gated, ok, verdicts

# The tables, plots and verdicts live in paper_tables.py, plots.py and verdicts.py; callers import them from here too.
__all__ = [
    "best_gated",
    "detr_table",
    "markdown",
    "paper_table",
    "plots",
    "swin_table",
    "swin_table_notes",
    "verdicts",
    "write",
]


def _kind(entry: dict[str, Any]) -> str:
    if entry["peer"]:
        return "peer"
    return "ours" if entry.get("gated", True) else "ours, ungated"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    out = _header(result) + _peaks_markdown(result) + _in_process_markdown(result)
    rows = result["paper_table"]
    if any(r.get("measured") is not False for r in rows):
        bs, threads = rows[0]["batch_size"], result["settings"]["threads"]
        title = f"## The DeiT paper's throughput table, measured here (batch {bs}, {threads} CPU threads)"
        out += [*_paper_markdown(title, rows, baseline="resnet50", label="ResNet-50", paper_img_s="d"), ""]
    out += _swin_markdown(result)
    out += _detr_markdown(result)
    out += _served_markdown(result)
    out += image_path_markdown(result)
    out += ["## Peers against our best gated path", ""]
    out += [f"- {line}" for line in result["verdicts"]] or ["- no peer was measured"]
    out.append("")
    out += _not_gated_or_measured_markdown(result)
    out += [f"![{title}]({file})" for title, file in plots.items()]
    return "\n".join(out) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    """The title, the command, the machine, the versions and the settings of the run."""
    m, s = result["machine"], result["settings"]
    sizes = [str(b) for b in s["batch_sizes"]]
    return [
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


def _peaks_markdown(result: dict[str, Any]) -> list[str]:
    """The GEMM peaks, when measured: what the "of peak" column divides by, what set each, and its spread."""
    if not result["peaks"]:
        return []
    out = [
        "## GEMM peaks",
        "",
        "| library | precision | GFLOP/s (int8: GOP/s), best window | at size | min / median / max of its windows "
        "there | every size: min / median / max (windows) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, p in result["peaks"].items():
        if p["status"] != "ok":
            out.append(f"| {name} | {p.get('precision', '')} | – | – | – | {p['reason']} |")
            continue
        sizes = "; ".join(
            f"{n}³: {v['min']:.0f} / {v['median']:.0f} / {v['max']:.0f} ({v['windows']})"
            for n, v in p.get("sizes", {}).items()
        )
        low = p.get("gflops_min")
        out.append(
            f"| {name} | {p['precision']} | {p['gflops']:.0f} | {p.get('size', '?')}³ | "
            f"{_fmt(low, '.0f')} / {p['gflops_median']:.0f} / {p['gflops']:.0f} | {sizes or '–'} |"
        )
    sources = result.get("peak_sources", {})
    peaks = ", ".join(
        f"{k} {v:.0f} {'GOP/s' if k == 'int8' else 'GFLOP/s'}" + (f" ({sources[k]['source']})" if k in sources else "")
        for k, v in result["peak_gflops"].items()
    )
    rounds = max((p.get("rounds", 1) for p in result["peaks"].values() if p["status"] == "ok"), default=1)
    return [
        *out,
        "",
        f"Peak by precision: {peaks}. Every library's matmul was measured at every size in {rounds} rounds "
        "interleaved with the models (before the first, after each); a precision's peak is the best window of "
        "any of them, or a model row's own best window where that was higher (the GEMM then under-measured the "
        'machine: the load moved), so no row is over 100%. A model row\'s "of peak" divides its median operations '
        "per second (2 x MACs per image) by the peak of the precision it runs in: INT8 rows by the int8 peak.",
        "",
    ]


def _in_process_markdown(result: dict[str, Any]) -> list[str]:
    """Every measured in-process path: img/s at each batch size, latency, GFLOP/s and the fraction of peak."""
    sizes = [str(b) for b in result["settings"]["batch_sizes"]]
    out = ["## Throughput in-process (img/s)", ""]
    header = ["model", "backend", "kind", "precision", *(f"batch {b}" for b in sizes)]
    header += [f"latency p50 ms (batch {sizes[0]})", f"GFLOP/s (batch {sizes[-1]})", "of peak"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(sizes) + 3)]
    for name, model in result["models"].items():
        out += [_in_process_row(name, backend, e, sizes) for backend, e in model["in_process"].items() if ok(e)]
    out.append("")
    return out


def _in_process_row(name: str, backend: str, e: dict[str, Any], sizes: list[str]) -> str:
    cells = []
    for b in sizes:
        r = e["batches"].get(b)
        cells.append(f"{r['img_s']:.1f} ±{r['spread'] * 100:.0f}%" if r else "–")
    first, last = e["batches"].get(sizes[0]), e["batches"].get(sizes[-1])
    frac = last.get("fraction_of_peak") if last else None
    gflops = last["gflops"] if last else None
    gflops_text = _fmt(gflops, ".0f" if (gflops or 0) >= 100 else ".3g")
    label = f"{backend} ({e['peer_model']})" if e.get("peer_model", f"timm {name}") != f"timm {name}" else backend
    label += f" (deployed: {e['deployed']})" if e.get("deployed") else ""
    return (
        f"| {name} | {label} | {_kind(e)} | {e['precision']} | "
        + " | ".join(cells)
        + f" | {_fmt(first and first['latency_ms_p50'])} | {gflops_text} | "
        # Two significant digits for the tiny test models' small fractions; whole percent from 10% up
        # (".2g" would print 105% as "1e+02%").
        + ("–" if frac is None else f"{frac * 100:.2g}%" if frac < 0.1 else f"{frac * 100:.0f}%")
        + " |"
    )


def _served_markdown(result: dict[str, Any]) -> list[str]:
    """The served variant of each model through Triton, at each protocol and concurrency."""
    served = [
        (n, p, c, r) for n, mo in result["models"].items() for p, pts in mo["served"].items() for c, r in pts.items()
    ]
    if not served:
        return []
    out = [
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
    return out


def _not_gated_or_measured_markdown(result: dict[str, Any]) -> list[str]:
    """The variants measured although they failed their gate, and the paths not measured (with why)."""
    models = result["models"]
    skipped = [(n, b, e["reason"]) for n, mo in models.items() for b, e in mo["in_process"].items() if not ok(e)]
    skipped += [(n, b, reason) for n, mo in models.items() for b, reason in mo.get("served_skipped", {}).items()]
    skipped += [(n, b, e["note"]) for n, mo in models.items() for b, e in mo["in_process"].items() if e.get("note")]
    failed_gate = [
        (n, b, e["gate_failure"])
        for n, mo in models.items()
        for b, e in mo["in_process"].items()
        if e.get("gate_failure")
    ]
    out = []
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
    return out


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
