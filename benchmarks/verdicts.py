"""The judgements of a `vitexport bench` run: our best gated in-process path, and where a peer beats it."""

from __future__ import annotations

from typing import Any


def ok(entry: dict[str, Any]) -> bool:
    return entry.get("status") == "ok" and bool(entry.get("batches"))


def best_gated(model: dict[str, Any], bs: str) -> tuple[str, float] | None:
    """Our fastest gated in-process path at this batch size (peers and served paths excluded)."""
    best = None
    for name, e in model["in_process"].items():
        if ok(e) and e.get("gated", not e["peer"]) and bs in e["batches"]:
            rate = e["batches"][bs]["img_s"]
            if best is None or rate > best[1]:
                best = (name, rate)
    return best


def verdicts(result: dict[str, Any]) -> list[str]:
    """Plain sentences: where a peer beats our best gated path, and where it does not."""
    lines = []
    for name, model in result["models"].items():
        sizes = sorted({bs for e in model["in_process"].values() if ok(e) for bs in e["batches"]}, key=int)
        for bs in sizes:
            ours = best_gated(model, bs)
            peers = [
                (p, e["batches"][bs]["img_s"])
                for p, e in model["in_process"].items()
                if ok(e) and e["peer"] and bs in e["batches"]
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
