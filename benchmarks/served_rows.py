"""The benchmark's served rows: which variant Triton serves (what `deploy` would choose from this run's measurements),
the served measurements, and each served row beside the same variant in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitexport.bench.runners import DEPLOYABLE, BenchBackend
from vitexport.errors import VitExportError, first_line
from vitexport.tasks import CLASSIFICATION, Task


def passed_gate(path: Path | None) -> bool:
    """Whether the variant's sidecar records a passed accuracy gate: a run without validation (--quick) reuses
    gated variants from the cache, but the ones it makes anew are not gated and are not called so."""
    from vitexport.artifacts import load_artifact

    if path is None:
        return False
    validation = load_artifact(path).validation or {}
    return bool(validation.get("passed")) and "images" in validation


def served_variant(
    entries: dict[str, dict], paths: dict[BenchBackend, Path], served, task: Task = CLASSIFICATION
) -> dict[str, Any] | None:
    """The variant the served rows serve: what `deploy` would serve, our fastest gated in-process variant of this run
    (at deploy's batch where measured, else the largest batch); a run that gated none (--quick) serves the fp32 ONNX
    Runtime variant, and says so. Where the run measured the variant `deploy` left in a repository, that one. Each
    served row carries this record as its `variant`."""
    deployed = next((b for b in DEPLOYABLE if entries.get(b.value, {}).get("deployed") and b in paths), None)
    if deployed is not None:
        where = entries[deployed.value]["deployed"]
        gated = bool(entries[deployed.value].get("gated"))  # its sidecar's verdict
        return _record(deployed, paths[deployed], entries, gated, f"the variant vitexport deploy wrote to {where}")
    deploy_batch = str(task.timing_batch)
    rates = {}
    for b in DEPLOYABLE:
        e = entries.get(b.value)
        if e and e["status"] == "ok" and e["gated"] and b in paths:
            bs = deploy_batch if deploy_batch in e["batches"] else max(e["batches"], key=int)
            rates[b] = (e["batches"][bs]["img_s"], bs)
    if rates:
        best = max(rates, key=lambda b: rates[b][0])
        rate, bs = rates[best]
        chosen = f"the fastest gated in-process variant of this run ({rate:.4g} img/s at batch {bs}), as deploy chooses"
        backend, path, gated = best, paths[best], True
    elif served[0] in paths:
        chosen = "no gated variant was measured in this run: the fp32 ONNX Runtime variant"
        backend, path = BenchBackend.onnxruntime, paths[served[0]]
        row = entries.get(backend.value)  # its gate verdict, from the in-process row or else from its sidecar
        gated = bool(row["gated"]) if row and "gated" in row else passed_gate(path)
    else:
        return None
    return _record(backend, path, entries, gated, chosen)


def _record(backend: BenchBackend, path: Path, entries: dict[str, dict], gated: bool, chosen: str) -> dict[str, Any]:
    e = entries.get(backend.value, {})
    return {
        "backend": backend.value,
        "runtime": backend.variant.runtime.value if backend.variant else "onnxruntime",
        "precision": e.get("precision", backend.precision),
        "artifact": path.name,
        "path": str(path),
        "gated": gated,
        "chosen": chosen,
    }


def beside_in_process(served: dict[str, dict[str, dict]], entries: dict[str, dict]) -> None:
    """Each served row at concurrency C beside the same variant in-process at batch C (what dynamic batching can at
    best turn C one-image requests into), when this run measured that batch."""
    for points in served.values():
        for c, row in points.items():
            batches = entries.get(row["variant"]["backend"], {}).get("batches", {})
            if c in batches:
                row["in_process_img_s"] = batches[c]["img_s"]
                row["served_over_in_process"] = round(row["img_s"] / batches[c]["img_s"], 3)


def served_rows(model, served, variant, skipped, config: Any, progress):
    """The served rows of `model` (`config`: the run's BenchConfig) by backend, the image path's result (or None),
    and why each could not be measured."""
    from vitexport.bench.served import serve_and_measure

    image = BenchBackend.triton_image in served
    protocols = [b.value.removeprefix("triton-") for b in served if b is not BenchBackend.triton_image]
    if variant is None:
        return {}, None, {b.value: skipped.get(b, "no served artifact") for b in served}
    try:
        results, image_path = serve_and_measure(
            Path(variant["path"]),
            config.workdir,
            protocols,
            config.served,
            triton_url=config.triton_url,
            served_name=model,
            image_path=config.image_path if image else None,
            progress=progress,
        )
    except VitExportError as e:
        return {}, None, {b.value: first_line(e) for b in served}
    record = {k: v for k, v in variant.items() if k != "path"}
    rows = {f"triton-{p}": {str(c): r | {"variant": record} for c, r in pts.items()} for p, pts in results.items()}
    return rows, None if image_path is None else image_path | {"variant": record}, {}
