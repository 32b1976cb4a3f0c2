"""The build's settings: the engine precision, the batch optimization profile, workspace and optimization level,
with their limits, and the stage's build errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitexport.artifacts import Precision
from vitexport.errors import ExportError

MAX_BATCH = 4096  # the exported ONNX's batch axis is declared 1..4096 (export/onnx.py)
MAX_WORKSPACE_GIB = 1024.0
OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0-5, TensorRT's default is 3
DEFAULT_OPT_LEVEL = 3
VALIDATION_MAX_BATCH = 8  # the ONNX Runtime fp32 reference runs on CPU: keep the validation batches small


class EngineBuildError(ExportError):
    pass


class GraphPrecisionError(ExportError):
    """The requested engine precision needs a different ONNX graph (e.g. the FP16 graph for TensorRT 11)."""

    def __init__(self, message: str, needed: Precision):
        super().__init__(message)
        self.needed = needed


ENGINE_PRECISIONS = (Precision.fp16, Precision.fp32, Precision.int8)  # TensorRT has no BF16 path here


@dataclass(frozen=True)
class BatchProfile:
    """The one optimization profile on the dynamic batch axis; TensorRT tunes kernels for `opt`."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise EngineBuildError(f"batch profile needs 1 <= MIN <= OPT <= MAX, got {self}")
        if self.max > MAX_BATCH:
            raise EngineBuildError(f"batch profile MAX {self.max} exceeds the ONNX batch axis limit {MAX_BATCH}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """ "MIN:OPT:MAX", or one number N for a fixed batch N:N:N."""
        parts = text.strip().split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise EngineBuildError(f"--batch must be MIN:OPT:MAX integers, e.g. 1:8:32, not {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise EngineBuildError(f"--batch must be MIN:OPT:MAX, e.g. 1:8:32, not {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, img_size: int) -> dict[str, tuple[int, int, int, int]]:
        return {k: (b, 3, img_size, img_size) for k, b in (("min", self.min), ("opt", self.opt), ("max", self.max))}

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def validation_batches(self) -> tuple[int, ...]:
        return tuple(sorted({b for b in (self.min, self.opt, self.max) if b <= VALIDATION_MAX_BATCH} or {self.min}))


@dataclass(frozen=True)
class BuildSettings:
    precision: Precision = Precision.fp16
    profile: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 32))
    workspace_gib: float = 4.0
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: Path | None = None  # None: `timing.cache` beside the engine
    validate: bool = True
    fp32_softmax: bool = False  # TensorRT 10 weak typing: also pin Softmax to FP32 (may prevent MHA fusion)

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise EngineBuildError(
                f"--precision must be fp16, fp32 or int8 for a TensorRT engine, not {self.precision}"
            )
        if not 0 < self.workspace_gib <= MAX_WORKSPACE_GIB:
            raise EngineBuildError(f"--workspace must be in (0, {MAX_WORKSPACE_GIB:g}] GiB, got {self.workspace_gib}")
        if self.opt_level not in OPT_LEVELS:
            raise EngineBuildError(f"--opt-level must be 0-5 (TensorRT's default is 3), got {self.opt_level}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * 2**30)

    @property
    def workspace_mib(self) -> int:
        return int(self.workspace_gib * 1024)
