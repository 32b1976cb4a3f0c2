"""`vitexport bench`: the GEMM peaks, every model's in-process sweep (ours and the peers, side by side) and its
served path through Triton, in one run, into one result dict (see vitexport.bench.report for what is written)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vitexport.bench.deployed import DEFAULT_REPO, Deployed
from vitexport.bench.image_path import QUICK_PHOTOS, ImagePathSettings, Photo
from vitexport.bench.peaks import GemmRounds, fill_fractions, gemm_rounds, peaks_by_precision
from vitexport.bench.runners import ALL_BACKENDS, QUICK_BACKENDS, TORCH_PEERS, BenchBackend, RunnerSpec
from vitexport.bench.served import ServedSettings
from vitexport.bench.served_rows import beside_in_process, passed_gate, served_rows, served_variant
from vitexport.bench.subject import Subject
from vitexport.bench.sweep import SweepSettings, sweep, workers
from vitexport.errors import VitExportError, first_line
from vitexport.tasks import task_of

QUICK_SWEEP = SweepSettings(batch_sizes=(1, 8), windows=3, duration=0.4, warmup=0.2)
QUICK_SERVED = ServedSettings(concurrency=(1, 4), window_ms=500, max_trials=5, stability=25)
GEMM_SIZES = (1024, 2048)
QUICK_GEMM_SIZES = (512, 1024)
QUICK_IMAGE_PATH = ImagePathSettings(photos=QUICK_PHOTOS, window_ms=500)


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    backends: tuple[BenchBackend, ...] = ALL_BACKENDS
    sweep: SweepSettings = field(default_factory=SweepSettings)
    served: ServedSettings = field(default_factory=ServedSettings)
    image_path: ImagePathSettings = field(default_factory=ImagePathSettings)  # measured with the triton-image backend
    repo: Path | None = None  # a repository `vitexport deploy` wrote: each model's deployed variant is measured
    with_deployed: tuple[BenchBackend, ...] = ()  # measured for a model only where it has a deployed variant
    workdir: Path = field(default_factory=lambda: default_workdir())
    validate: bool = True  # export validation and the optimize stage's accuracy gate
    gemm: bool = True
    gemm_sizes: tuple[int, ...] = GEMM_SIZES  # the matmuls' sides, each measured in every round
    triton_url: str | None = None  # HOST:HTTP_PORT:GRPC_PORT of a running Triton serving the models by name
    command: str = ""

    @classmethod
    def quick(cls, models: tuple[str, ...], **changes: Any) -> BenchConfig:
        """Under 3 minutes on 2 cores for four models: eager torch against the plain ONNX on ONNX Runtime, two
        batch sizes, short windows, artifacts not re-validated; and for a model `deploy` wrote into model_repository,
        its variant as it is, in-process, served and its image path."""
        base = {
            "backends": QUICK_BACKENDS,
            "sweep": QUICK_SWEEP,
            "served": QUICK_SERVED,
            "image_path": QUICK_IMAGE_PATH,
            # What deploy chose, beside the peers: its row, served (tensors and photographs), in the budget.
            "repo": DEFAULT_REPO,
            "with_deployed": (BenchBackend.triton_grpc, BenchBackend.triton_image),
            "validate": False,
            "gemm_sizes": QUICK_GEMM_SIZES,
        }
        return cls(models, **(base | changes))

    @classmethod
    def from_options(
        cls,
        models: tuple[str, ...],
        *,
        quick: bool = False,
        backends: tuple[BenchBackend, ...] | None = None,
        batch_sizes: tuple[int, ...] | None = None,
        concurrency: tuple[int, ...] | None = None,
        threads: int = 2,
        duration: float | None = None,
        windows: int | None = None,
        photos: tuple[Photo, ...] | None = None,
        preprocess: str | None = None,
        **changes: Any,
    ) -> BenchConfig:
        """The defaults of a full or --quick run, with what the user set over them (None: the default)."""
        config = cls.quick(models) if quick else cls(models)
        sweep = replace(
            config.sweep,
            threads=threads,
            **{
                k: v
                for k, v in (("batch_sizes", batch_sizes), ("duration", duration), ("windows", windows))
                if v is not None  # 0 is refused by check_config, not taken for "the default"
            },
        )
        served = replace(
            config.served,
            threads=threads,
            **({"concurrency": concurrency} if concurrency else {}),
            # A window must hold requests: DETR takes seconds per image, so --duration sets the served windows too.
            **({"window_ms": round(duration * 1000)} if duration else {}),
        )
        image_path = replace(
            config.image_path,
            **({"photos": photos} if photos else {}),
            **({"preprocess": preprocess} if preprocess else {}),
        )
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(
            config, backends=backends or config.backends, sweep=sweep, served=served, image_path=image_path, **kept
        )


def default_workdir() -> Path:
    """Exports and variants are kept between runs (making them costs minutes); outside the checkout."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vitexport" / "bench"


def check_config(config: BenchConfig) -> None:
    from vitexport.bench.subject import subject

    if not config.models:
        raise VitExportError("give at least one model")
    for name in config.models:
        subject(name)  # unknown names, files without a sidecar: one line
    s = config.sweep
    if not s.batch_sizes or min(s.batch_sizes) < 1:
        raise VitExportError(f"batch sizes must be >= 1, got {list(s.batch_sizes)}")
    if not config.served.concurrency or min(config.served.concurrency) < 1:
        raise VitExportError(f"concurrency must be >= 1, got {list(config.served.concurrency)}")
    if not config.gemm_sizes or min(config.gemm_sizes) < 1:
        raise VitExportError(f"GEMM sizes must be >= 1, got {list(config.gemm_sizes)}")
    if s.windows < 1 or s.duration <= 0 or s.threads < 1:
        raise VitExportError("windows, duration and threads must be positive")
    if config.triton_url:
        from vitexport.bench.served import parse_triton_url

        parse_triton_url(config.triton_url)


def run(config: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure everything the config asks for; backends that cannot run here are recorded with the reason."""
    from vitexport.bench.machine import machine_info
    from vitexport.bench.subject import subject

    check_config(config)
    config.workdir.mkdir(parents=True, exist_ok=True)
    logs = config.workdir / "logs"
    logs.mkdir(exist_ok=True)
    progress = _logged(progress, logs / "progress.log")
    machine = machine_info()
    loads = [os.getloadavg()[0]]
    models = {}
    with _gemm(config, logs, progress) as gemm:
        if gemm:
            gemm.round("before the models", progress)
        for name in config.models:
            s = subject(name)
            models[s.name] = _model(s, config, logs, progress)
            loads.append(os.getloadavg()[0])
            if gemm:
                gemm.round(f"after {s.name}", progress)
        peaks = gemm.results() if gemm else {}
    peak, peak_sources = peaks_by_precision(peaks, models)
    fill_fractions(models, peak)
    result = {
        "benchmark": "bench",
        "command": config.command or "vitexport bench " + " ".join(config.models),
        **({"deployed_from": str(config.repo)} if config.repo else {}),
        "machine": machine,
        "settings": asdict(config.sweep)
        | {
            "backends": [b.value for b in config.backends],
            "concurrency": list(config.served.concurrency),
            "served_window_ms": config.served.window_ms,
            "gemm_sizes": list(config.gemm_sizes) if config.gemm else [],
            "validate": config.validate,
            "onnxruntime_spinning": False,
            "process_per_backend": True,
            "python": platform.python_version(),
        },
        "load_average": {"start": round(loads[0], 2), "end": round(loads[-1], 2), "max": round(max(loads), 2)},
        "peaks": peaks,
        "peak_gflops": {k: round(v, 1) if v >= 10 else float(f"{v:.4g}") for k, v in peak.items()},
        "peak_sources": peak_sources,
        "models": models,
    }
    from vitexport.bench.report import detr_table, paper_table, swin_table, verdicts

    result["paper_table"] = paper_table(result)
    result["swin_table"] = swin_table(result)
    result["detr_table"] = detr_table(result)
    result["verdicts"] = verdicts(result)
    return result


def _logged(progress: Callable[[str], None], log: Path) -> Callable[[str], None]:
    """The progress callback, also appending timestamped lines to a log (a long run can be followed with tail -f;
    the terminal spinner shows only the latest line)."""
    import time

    def report(message: str) -> None:
        with log.open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}  {message}\n")
        progress(message)

    return report


@contextlib.contextmanager
def _gemm(config: BenchConfig, logs: Path, progress) -> Iterator[GemmRounds | None]:
    """The run's GEMM rounds (None: not measured): short windows, each round as long as the sizes' windows take."""
    if not config.gemm:
        yield None
        return
    windows = max(1, config.sweep.windows - 1)  # per round; a run has at least two rounds
    settings = SweepSettings(
        batch_sizes=config.gemm_sizes, windows=windows, duration=min(config.sweep.duration, 1.0), warmup=0.3,
        threads=config.sweep.threads,
    )  # fmt: skip
    with gemm_rounds(config.gemm_sizes, settings, logs, _no_native_bf16(), progress) as rounds:
        yield rounds


def _model(spec: Subject, config: BenchConfig, logs: Path, progress) -> dict[str, Any]:
    # FLOPs = 2 x MACs, as the registry's (and the ONNX count's) MACs count matmuls and convolutions.
    gflop = 2 * spec.macs / 1e9 if spec.macs else None
    backends, deployed = _backends(spec, config)
    in_process = [b for b in backends if not b.served]
    served = [b for b in backends if b.served]
    wanted, paths, skipped, ungated = _prepared(spec, config, backends, deployed, progress)
    entries: dict[str, dict[str, Any]] = {}
    runnable = {}
    timm_name = _timm_peer(spec.name, skipped) if BenchBackend.timm in wanted else None
    if BenchBackend.transformers in wanted:
        _transformers_peer(spec.name, skipped)
    for b in in_process:
        if b in skipped:
            entries[b.value] = {"status": "skipped", "reason": skipped[b], "peer": b.peer}
        else:
            runnable[b.value] = RunnerSpec(b, spec.name, config.sweep.threads, paths.get(b))
    progress(f"{spec.name}: loading {', '.join(runnable)}")
    with workers(runnable, logs / spec.name if _mkdir(logs / spec.name) else None) as pool:
        for w in pool.values():
            w.wait_ready()
        measured = sweep(pool, config.sweep, spec.img_size, progress, spec.name)
        peer_models = {BenchBackend.timm: f"timm {timm_name}", BenchBackend.transformers: TRANSFORMERS_DETR}
        for backend_name, w in pool.items():
            b = BenchBackend(backend_name)
            gate = (b not in ungated and passed_gate(paths.get(b)), ungated.get(b))
            facts = _Measured(b, w.precision or b.precision, gflop, paths.get(b), peer_models.get(b), gate)
            entries[backend_name] = _entry(facts, measured.get(backend_name), w.error or w.limited, w.limited)
    if deployed and deployed.backend.value in entries:
        where = f"{config.repo}/{deployed.served_as}/{deployed.version}"
        entries[deployed.backend.value]["deployed"] = where  # the served rows serve it (served_variant)
    ordered = {b.value: entries[b.value] for b in in_process if b.value in entries}
    served_results, image_path, served_skipped = {}, None, {}
    if served:
        variant = served_variant(entries, paths, served, task_of(spec))
        served_results, image_path, served_skipped = served_rows(spec.name, served, variant, skipped, config, progress)
        beside_in_process(served_results, entries)
    return {
        "family": spec.family,
        "task": spec.task,
        "params": spec.params,
        "resolution": spec.img_size,
        "gflop_per_image": None if gflop is None else round(gflop, 3),
        **({"artifact": str(spec.artifact)} if spec.artifact else {}),
        "in_process": ordered,
        "served": served_results,
        **({"image_path": image_path} if image_path else {}),
        "served_skipped": served_skipped,
    }


TRANSFORMERS_DETR = "transformers DetrForObjectDetection"


def _prepared(spec: Subject, config: BenchConfig, backends: list[BenchBackend], deployed: Deployed | None, progress):
    """(the backends to run, their model files, why others cannot run, the ungated variants' gate verdicts)."""
    from vitexport.bench.prepare import prepare

    no_bf16 = _no_native_bf16() if BenchBackend.openvino_bf16 in backends else None
    unregistered = [] if spec.registered else [b for b in backends if b in TORCH_PEERS]
    wanted = [b for b in backends if not (no_bf16 and b is BenchBackend.openvino_bf16) and b not in unregistered]
    # deploy's file is measured as it is: its row and the served ones need nothing built.
    given = {b: deployed.path for b in wanted if deployed and (b is deployed.backend or b.served)}
    paths, skipped, ungated = prepare(
        spec.name, [b for b in wanted if b not in given], config.workdir, validate=config.validate,
        source=spec.artifact, progress=progress,
    )  # fmt: skip
    paths |= given  # served paths: deploy's file, else the onnxruntime variant
    if no_bf16:
        skipped[BenchBackend.openvino_bf16] = no_bf16
    for b in unregistered:
        skipped[b] = f"{spec.artifact.name} is an ONNX file: there is no PyTorch model to run"
    return wanted, paths, skipped, ungated


def _backends(spec: Subject, config: BenchConfig) -> tuple[list[BenchBackend], Deployed | None]:
    """The model's backends: the run's, less the reference implementations that do not run this kind of model
    (timm has no DETR; transformers is the detectors' reference only), plus, where `deploy` left a variant of it in
    the repository, that variant's row and `with_deployed` (--quick: served, tensors and photographs)."""
    from vitexport.bench.deployed import find_deployed

    backends = [b for b in config.backends if b.applies_to(task_of(spec))]
    deployed = find_deployed(config.repo, spec.name, spec.given) if config.repo else None
    if deployed is not None:
        backends += [b for b in (deployed.backend, *config.with_deployed) if b not in backends]
    return backends, deployed


@dataclass(frozen=True)
class _Measured:
    """What a row's entry says beside its measurements."""

    backend: BenchBackend
    precision: str  # what it really computed in (OpenVINO reports it)
    gflop: float | None  # per image
    path: Path | None  # its model file
    peer_model: str | None  # a reference peer's model, as the report names it
    gate: tuple[bool, str | None]  # (passed its gate, why a kept variant failed it)


def _entry(facts: _Measured, measured: dict | None, failure: str | None, note: str | None) -> dict[str, Any]:
    """One in-process row of the results: its batches' throughput and GFLOP/s (the fraction of the peak is filled in
    once the run's peaks are known: vitexport.bench.peaks), or why it failed."""
    b = facts.backend
    if not measured:
        return {"status": "failed", "reason": failure or "not measured", "peer": b.peer}
    batches = {}
    for bs, m in measured.items():
        s = m.summary()
        rate = s["img_s"] * facts.gflop if facts.gflop else None
        s["gflops"] = _significant(rate) if rate else None
        batches[str(bs)] = s
    passed, gate_failure = facts.gate
    return {
        "status": "ok",
        "peer": b.peer,
        "gated": not b.peer and passed,
        **({"gate_failure": gate_failure} if gate_failure else {}),
        "precision": facts.precision,
        "artifact": facts.path.name if facts.path else None,
        **({"peer_model": facts.peer_model} if facts.peer_model else {}),
        "batches": batches,
        **({"note": note} if note else {}),
    }


def _timm_peer(model: str, skipped: dict[BenchBackend, str]) -> str | None:
    """timm's name for the model (the report shows it), or None with the reason recorded as the peer's skip."""
    from vitexport.bench.runners import timm_peer_name

    try:
        return timm_peer_name(model)
    except VitExportError as e:
        skipped[BenchBackend.timm] = first_line(e)
        return None


def _transformers_peer(model: str, skipped: dict[BenchBackend, str]) -> None:
    from vitexport.bench.runners import transformers_equivalent

    try:
        transformers_equivalent(model)
    except VitExportError as e:
        skipped[BenchBackend.transformers] = first_line(e)


def _no_native_bf16() -> str | None:
    """Why OpenVINO's bf16 hint is not worth sweeping here (None: the CPU computes BF16 natively). Without BF16
    instructions OpenVINO still honours the hint, emulated: measured here about 20x slower than f32 (DeiT-S, 4.9 s
    per image), which would take the whole run's time for one figure; the GEMM peaks show the emulated rate."""
    try:
        from vitexport.export.openvino import cpu_capabilities

        capabilities = cpu_capabilities()
    except Exception:
        return None
    if "BF16" in capabilities:
        return None
    return f"this CPU has no native BF16 (OpenVINO CPU capabilities: {', '.join(capabilities)}); bf16 runs emulated"


def _significant(x: float, digits: int = 4) -> float:
    """Rounded to significant digits: tiny test models do a few MFLOP per image, DeiT-B 35 GFLOP."""
    return float(f"{x:.{digits}g}")


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True
