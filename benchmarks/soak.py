"""A soak: a real Triton serving one model to many clients at once for a bounded time, every answer checked against
ONNX Runtime in this process, hostile requests mixed in, the server's memory sampled. A reliability check, not a
speed benchmark: its latencies are what the clients saw on a machine the server shares with them.

Half the clients speak HTTP, half gRPC; each alternates encoded photographs (the `<model>_image` ensemble: decode,
preprocess, model, softmax) and preprocessed tensors (the model itself). One more client sends, in turn, the requests
the reliability issue found harmful (a decompression bomb, a 20000 x 1 strip, undecodable and empty bytes, NaN
pixels, a wrong shape, a request abandoned mid-flight, half an HTTP request) and records whether each was refused as
the client's mistake (HTTP 400 / gRPC INVALID_ARGUMENT) and how fast.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.bench.hostile import ABANDONED, CLIENT_ERRORS, HALF_A_REQUEST, hostile_cases, hostile_request, send
from vitexport.bench.memory import memory_mb, process_tree, shared_mb, slope
from vitexport.serving import config as cfg
from vitexport.serving.processes import stubs_of
from vitexport.serving.server import TritonServer


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 120.0
    clients: int = 8  # half HTTP, half gRPC
    hostile_every_s: float = 1.0  # one hostile request this often, besides the clients
    photos: int = 12  # distinct photographs (crops of skimage's) and as many tensors, with their expected answers
    top_k: int = 5
    atol: float = 1e-4  # served against in-process: logits, and the probabilities
    timeout_s: float = 60.0
    memory_every_s: float = 1.0
    # Over the last 30 minutes of a run that long: private memory plus the /dev/shm pools (issue 21: at most 0.5).
    max_slope_mb_per_min: float = 0.5


@dataclass(frozen=True)
class Expected:
    """What ONNX Runtime in this process answers for the soak's inputs."""

    images: list[bytes]  # encoded JPEGs
    probabilities: np.ndarray  # (photos, classes): softmax of the model on each decoded, preprocessed image
    tensors: np.ndarray  # (photos, 3, S, S) preprocessed inputs sent as tensors
    logits: np.ndarray  # (photos, classes)


def expected_answers(artifact: ModelArtifact, count: int) -> Expected:
    from PIL import Image

    from vitexport.export.photos import GATE_PHOTOS, crops
    from vitexport.ort import ort_session
    from vitexport.preprocess import preprocess_image

    session = ort_session(artifact.path, spinning=False)
    images = []
    for _, crop in crops(count, photos=GATE_PHOTOS, seed=7):
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    # The server decodes the same bytes with the same Pillow and preprocessing code.
    decoded = np.stack([preprocess_image(b, artifact.preprocess) for b in images])
    rng = np.random.default_rng(0)
    tensors = (decoded + rng.normal(0, 0.1, decoded.shape)).astype(np.float32)  # not the images again

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {artifact.input_name: x[i : i + 1]})[0] for i in range(len(x))])

    logits = run(decoded)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return Expected(images, e / e.sum(axis=1, keepdims=True), tensors, run(tensors))


# -- the soak --------------------------------------------------------------------------------------------------------


class _Record:
    """Thread-safe lists of what happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, float, str]] = []  # (t, kind, ms, outcome: ok|mismatch|error)
        self.errors: list[str] = []
        self.hostile: list[dict[str, Any]] = []
        self.memory: list[tuple[float, float, int]] = []  # (t, RSS MB of Triton and its stubs, processes)
        # (t, MB: their private memory (RssAnon) + the /dev/shm pools counted once, processes): RSS counts a pool's
        # pages in every process that touched them.
        self.private: list[tuple[float, float, int]] = []
        self.by_process: list[dict[str, dict[str, float]]] = []  # at each sample: VmRSS, RssAnon, RssShmem of each
        self.crashes: list[str] = []  # a soak thread's own failure: the soak did not run as meant

    def guarded(self, fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args) -> None:
            try:
                fn(*args)
            except Exception as error:
                with self.lock:
                    self.crashes.append(f"{fn.__name__}: {type(error).__name__}: {error}")

        return run

    def request(self, t: float, kind: str, ms: float, outcome: str, error: str | None = None) -> None:
        with self.lock:
            self.requests.append((t, kind, ms, outcome))
            if error and len(self.errors) < 50:
                self.errors.append(f"{kind}: {error}")


@dataclass(frozen=True)
class _Soak:
    """One soak: what its threads (the clients, the hostile sender, the memory sampler) share and record into."""

    server: TritonServer
    model: str
    input_name: str
    expected: Expected
    s: SoakSettings
    record: _Record
    start: float
    deadline: float

    def client(self, index: int) -> None:
        """Requests one after another until the deadline, alternating photographs (the `<model>_image` ensemble) and
        tensors (the model itself), each answer checked."""
        from vitexport.serving.client import connect

        e, s = self.server.endpoints, self.s
        protocol = "http" if index % 2 == 0 else "grpc"
        triton, module = connect(e.http if protocol == "http" else e.grpc, protocol, timeout=s.timeout_s)
        options = {"client_timeout": s.timeout_s} if protocol == "grpc" else {}
        n = index
        try:
            while time.monotonic() < self.deadline:
                i, n = n % len(self.expected.images), n + 1
                kind = f"{protocol} {'image' if n % 2 else 'tensor'}"
                t0 = time.perf_counter()
                try:
                    problem = (
                        self._image(triton, module, options, i) if n % 2 else self._tensor(triton, module, options, i)
                    )
                    outcome = "mismatch" if problem else "ok"
                except Exception as error:  # every failure is recorded, none ends the soak
                    problem, outcome = f"{type(error).__name__}: {error}", "error"
                ms = (time.perf_counter() - t0) * 1e3
                self.record.request(time.monotonic() - self.start, kind, ms, outcome, problem)
        finally:
            triton.close()

    def _image(self, triton, module, options: dict, i: int) -> str | None:
        inputs = {cfg.IMAGE_INPUT: np.array([[self.expected.images[i]]], dtype=np.object_)}
        result = send(triton, module, f"{self.model}_image", inputs, [cfg.PROBABILITIES], options)
        worst = float(np.abs(result.as_numpy(cfg.PROBABILITIES)[0] - self.expected.probabilities[i]).max())
        return None if worst <= self.s.atol else f"probabilities differ by {worst:.2e}"

    def _tensor(self, triton, module, options: dict, i: int) -> str | None:
        inputs = {self.input_name: self.expected.tensors[i : i + 1]}
        result = send(triton, module, self.model, inputs, ["logits"], options)
        worst = float(np.abs(result.as_numpy("logits")[0] - self.expected.logits[i]).max())
        return None if worst <= self.s.atol else f"logits differ by {worst:.2e}"

    def hostile(self) -> None:
        """One hostile request every `hostile_every_s`, the cases in turn, over HTTP then gRPC."""
        cases = hostile_cases(self.model, f"{self.model}_image", self.input_name, self.expected.tensors.shape[-1])
        names, n = [*cases, HALF_A_REQUEST], 0
        while time.monotonic() + self.s.hostile_every_s < self.deadline:
            name, protocol = names[n % len(names)], ("http", "grpc")[(n // len(names)) % 2]
            n += 1
            t0 = time.perf_counter()
            status = hostile_request(name, cases, protocol, self.server.endpoints)
            self.record.hostile.append(
                {"case": name, "protocol": protocol, "status": status, "ms": (time.perf_counter() - t0) * 1e3}
            )
            time.sleep(self.s.hostile_every_s)

    def memory(self) -> None:
        """The resident memory of Triton and its stubs every `memory_every_s`."""
        while time.monotonic() < self.deadline:
            pids = process_tree(self.server.process_group)
            t, memory = time.monotonic() - self.start, memory_mb(pids)
            private = sum(m["RssAnon"] for m in memory.values()) + shared_mb(pids)
            self.record.memory.append((t, sum(m["VmRSS"] for m in memory.values()), len(pids)))
            self.record.private.append((t, private, len(pids)))
            self.record.by_process.append(memory)
            time.sleep(self.s.memory_every_s)


def soak(server: TritonServer, model: str, expected: Expected, s: SoakSettings, input_name: str) -> dict[str, Any]:
    """Run the clients against a started server for `s.duration_s`; what they saw, checked."""
    assert server.endpoints is not None and server.process_group is not None
    start = time.monotonic()
    run = _Soak(server, model, input_name, expected, s, _Record(), start, start + s.duration_s)
    stubs_before = sorted(st.pid for st in _stubs(server))
    threads = [threading.Thread(target=run.record.guarded(run.client), args=(i,)) for i in range(s.clients)]
    threads += [threading.Thread(target=run.record.guarded(fn)) for fn in (run.hostile, run.memory)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.check_backends()  # raises, naming the model, if a stub died
    return summarise(
        run.record, s, ready=server.is_ready(), stubs_kept=stubs_before == sorted(st.pid for st in _stubs(server))
    )


def _stubs(server: TritonServer):
    return stubs_of(server.process_group)[0]


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _memory_summary(record: _Record) -> dict[str, Any]:
    """RSS of Triton and its stubs summed (the pools' pages counted in each process that touched them), and their
    private memory plus the pools counted once: the first and last quarter's means, the slopes, by process."""
    rss, private = [m for _, m, _ in record.memory], [m for _, m, _ in record.private]
    quarter = max(1, len(rss) // 4)

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 1) if values else None

    def by_process(field: str) -> dict[str, list[float | None]]:
        names = sorted({n for r in record.by_process for n in r})
        samples = record.by_process
        return {
            n: [mean([r.get(n, {}).get(field, 0.0) for r in part]) for part in (samples[:quarter], samples[-quarter:])]
            for n in names
        }

    return {
        "first_quarter": mean(rss[:quarter]),
        "last_quarter": mean(rss[-quarter:]),
        "max": round(max(rss), 1) if rss else None,
        "last_half_slope_mb_per_min": slope(record.memory),
        "last_30_min_slope_mb_per_min": slope(record.memory, last_s=1800),  # None in a run under 30 minutes
        "private_and_shared": {
            "first_quarter": mean(private[:quarter]),
            "last_quarter": mean(private[-quarter:]),
            "last_half_slope_mb_per_min": slope(record.private),
            "last_30_min_slope_mb_per_min": slope(record.private, last_s=1800),
        },
        # Which process grew, and in what: the mean of each over the first and the last quarter of the samples.
        "by_process": by_process("VmRSS"),
        "by_process_private": by_process("RssAnon"),
        "series": [(round(t, 1), round(m, 1), n) for t, m, n in record.memory],
        "private_series": [(round(t, 1), round(m, 1), n) for t, m, n in record.private],
    }


def summarise(record: _Record, s: SoakSettings, *, ready: bool, stubs_kept: bool) -> dict[str, Any]:
    kinds = sorted({k for _, k, _, _ in record.requests})
    latency = {}
    for kind in [*kinds, "all"]:
        ms = [m for _, k, m, o in record.requests if o == "ok" and kind in (k, "all")]
        latency[kind] = {"ok": len(ms), "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99)}
    hostile: dict[str, dict[str, Any]] = {}
    for h in record.hostile:
        row = hostile.setdefault(h["case"], {"sent": 0, "statuses": {}, "max_ms": 0.0})
        row["sent"] += 1
        row["statuses"][h["status"]] = row["statuses"].get(h["status"], 0) + 1
        row["max_ms"] = round(max(row["max_ms"], h["ms"]), 1)
    for case, row in hostile.items():
        mistake = case not in (ABANDONED, HALF_A_REQUEST)
        row["refused_as_client_error"] = set(row["statuses"]) <= CLIENT_ERRORS if mistake else None
    outcomes = [o for *_, o in record.requests]
    return {
        "settings": asdict(s),
        "requests": len(outcomes),
        "ok": outcomes.count("ok"),
        "mismatches": outcomes.count("mismatch"),
        "errors": outcomes.count("error"),
        "first_problems": record.errors[:20],
        "crashes": record.crashes,
        "img_s": round(len(outcomes) / s.duration_s, 2),
        "latency": latency,
        "hostile": hostile,
        "memory_mb": _memory_summary(record),
        "ready_at_end": ready,
        "stubs_unchanged": stubs_kept,
        "timeline": [(round(t, 2), k, round(m, 1), o) for t, k, m, o in record.requests],
    }


def passed(result: dict[str, Any]) -> list[str]:
    """What went wrong, as readable lines (empty: the soak held)."""
    problems = []
    if result["requests"] == 0:
        problems.append("no request completed")
    problems += [f"a soak thread failed: {crash}" for crash in result["crashes"]]
    if not result["hostile"]:
        problems.append("no hostile request was sent")
    if result["mismatches"] or result["errors"]:
        problems.append(f"{result['mismatches']} wrong answers and {result['errors']} errors")
    for case, row in result["hostile"].items():
        if row["refused_as_client_error"] is False:
            problems.append(f"{case}: answered {row['statuses']}, not a client error")
    late = result["memory_mb"]["private_and_shared"]["last_30_min_slope_mb_per_min"]
    if late is not None and late > result["settings"]["max_slope_mb_per_min"]:
        problems.append(f"memory grew {late} MB/min over the last 30 minutes")
    if not result["ready_at_end"]:
        problems.append("the server was not ready at the end")
    if not result["stubs_unchanged"]:
        problems.append("the backend processes changed during the soak")
    return problems


def serve_and_soak(
    artifact: ModelArtifact,
    workdir: Path,
    settings: SoakSettings,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write the artifact with its image ensemble into a fresh repository in `workdir`, serve it on free ports,
    soak it, stop it."""
    from vitexport.bench.machine import machine_info
    from vitexport.serving.repository import add_model

    progress("in-process answers")
    expected = expected_answers(artifact, settings.photos)
    repo = workdir / "model_repository"
    added = add_model(repo, artifact, require_gate=False, top_k=settings.top_k)
    progress(f"serving {added.name} and soaking for {settings.duration_s:g} s")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with TritonServer(repo) as server:
        start_s = time.monotonic() - started
        result = soak(server, added.name, expected, settings, artifact.input_name)
    return {
        "machine": machine_info(),
        "model": artifact.model,
        "artifact": {"file": artifact.path.name, "precision": str(artifact.precision), "backend": added.backend.value},
        "server_start_s": round(start_s, 1),
        "load_average": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},  # others' work too
        **result,
    }
