"""The one place ONNX Runtime sessions are made (export checks, the gate, runners, benchmarks, Triton backends), so
threads, spinning and providers are set alike everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def ort_session(
    path: str | Path | bytes,
    *,
    threads: int | None = None,
    spinning: bool = True,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """An `onnxruntime.InferenceSession` on `path`. `threads`: intra-op threads (inter-op 1), None for ORT's default.
    `spinning=False` stops idle intra-op threads from spinning: they slow whatever else shares the process or the
    cores (another runtime measured after this one, the other stubs and the server's threads) by up to 40%."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=list(providers))
