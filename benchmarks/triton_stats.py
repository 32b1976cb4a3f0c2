"""Triton's statistics extension, per model: running totals read before and after a measurement, and the
milliseconds per request of each stage between two readings (what the image path reports as where the time goes)."""

from __future__ import annotations

from typing import Any

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def model_statistics(url: str) -> dict[str, dict[str, int]]:
    """Triton's running totals of every model (the statistics extension, over gRPC): requests, inferences (images),
    executions (batches), and the nanoseconds of success (the request's whole time in the server) and each stage."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for m in stats.get("model_stats", []):
        inference = m.get("inference_stats", {})
        totals = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "inferences": int(m.get("inference_count", 0)),
            "executions": int(m.get("execution_count", 0)),
            "success_ns": int(inference.get("success", {}).get("ns", 0)),
        }
        totals.update({f"{s}_ns": int(inference.get(s, {}).get("ns", 0)) for s in STAGES})
        out[m["name"]] = totals
    return out


def per_request(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Each model that ran between two readings: its requests, mean batch, and milliseconds per request of its
    whole time in the server (`server_ms`) and of each stage (a batch's compute counts once for each of its
    requests, as Triton reports it: per request, not per image)."""
    out: dict[str, dict[str, Any]] = {}
    for name, totals in after.items():
        old = before.get(name, dict.fromkeys(totals, 0))
        requests = totals["requests"] - old["requests"]
        if requests <= 0:
            continue
        executions = totals["executions"] - old["executions"]
        row: dict[str, Any] = {
            "requests": requests,
            "mean_batch": round((totals["inferences"] - old["inferences"]) / executions, 2) if executions else None,
            "server_ms": round((totals["success_ns"] - old["success_ns"]) / requests / 1e6, 3),
        }
        row.update({f"{s}_ms": round((totals[f"{s}_ns"] - old[f"{s}_ns"]) / requests / 1e6, 3) for s in STAGES})
        out[name] = row
    return out
