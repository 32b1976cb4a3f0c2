"""Dynamic batching of a served model as data: what the user asked for, checked, and an engine's from its profile."""

from __future__ import annotations

from dataclasses import dataclass

from vitexport.errors import ServingError

# Triton keeps the batch size in an int32 and sizes its buffers by it; no image model batches more on one server.
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: Triton merges queued requests up to max_batch_size, waiting at most max_queue_delay_us."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.max_batch_size <= MAX_BATCH_SIZE:
            raise ServingError(f"max batch size must be 0..{MAX_BATCH_SIZE}, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ServingError(f"queue delay must be >= 0 microseconds, got {self.max_queue_delay_us}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ServingError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size} (the max batch size)")


def batching_from_options(
    max_batch_size: int | None, preferred_batch_sizes: tuple[int, ...] = (), max_queue_delay_us: int | None = None
) -> Batching | None:
    """The batching the user asked for, or None for each backend's default (an engine's comes from its profile)."""
    if (
        max_batch_size is None
        and not preferred_batch_sizes
        and max_queue_delay_us in (None, Batching.max_queue_delay_us)
    ):
        return None
    size = max_batch_size if max_batch_size is not None else Batching.max_batch_size
    delay = Batching.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
    return Batching(size, tuple(preferred_batch_sizes), delay)


def tensorrt_batching(profile: dict[str, int], requested: Batching | None = None) -> Batching:
    """Batching for an engine: the profile's max is the largest batch it accepts, its opt (and max) are preferred."""
    lo, opt, hi = int(profile["min"]), int(profile["opt"]), int(profile["max"])
    if lo > 1:
        # Triton may hand the engine batches of 1: an engine that cannot run them would fail requests at random.
        raise ServingError(f"the engine's profile starts at batch {lo}; Triton needs engines that accept batch 1")
    if requested is not None and requested.max_batch_size > hi:
        raise ServingError(f"max batch size {requested.max_batch_size} exceeds the engine profile's max {hi}")
    delay = requested.max_queue_delay_us if requested else Batching.max_queue_delay_us
    return Batching(max_batch_size=hi, preferred_batch_sizes=tuple(sorted({opt, hi})), max_queue_delay_us=delay)
