"""Watching a running `TritonServer`: when tritonserver or one of its backend stubs dies, say why at once (its exit
status or signal and the errors it logged since it was ready; which model's stub) and, with `Restart.on_failure`,
start it again on the same endpoints: back-off 1 s doubling to 30 s, at most `limit` restarts in `window` seconds,
each restart one line. `Restart.no` ends the watch with the reason, as `serve` always did (exit 1, for systemd or
Kubernetes, whose liveness probe is the other supervisor).

The check is cheap and never waits on Triton: `check_backends` reads /proc, and asks Triton nothing unless model
control is on; so a stub killed while its model holds a long request is seen at the next tick, not after it. What
made that 11.8 s before was the stop: Triton waits up to --exit-timeout-secs (10 s) for the request the dead stub
held, and the line was printed after; a server found broken is now killed at once, after the line."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitexport.errors import ServingError

if TYPE_CHECKING:  # the CLI imports RestartPolicy for its options: nothing heavy at `vitexport --help`
    from vitexport.serving.server import TritonServer


class RestartPolicy(str, enum.Enum):
    no = "no"
    on_failure = "on-failure"


@dataclass(frozen=True)
class Restart:
    policy: RestartPolicy = RestartPolicy.no
    limit: int = 5  # restarts allowed within `window`; one more failure ends the watch
    window: float = 600.0
    first_delay: float = 1.0
    max_delay: float = 30.0
    interval: float = 0.25  # seconds between checks

    def __post_init__(self) -> None:
        if self.limit < 0 or self.window <= 0 or not 0 < self.interval <= 1:
            raise ServingError(f"restart limit must be >= 0, window > 0, interval in (0, 1]: {self}")

    def delay(self, recent: int) -> float:
        """The wait before the next restart, after `recent` restarts within the window."""
        return min(self.max_delay, self.first_delay * 2**recent)


def failure(server: TritonServer) -> str | None:
    """Why the server is no longer serving (None: it is): tritonserver's death, or a backend stub's."""
    reason = server.death()
    if reason:
        return reason
    try:
        server.check_backends()
    except ServingError as e:
        return str(e).split("; stopping the server")[0]
    return None


def supervise(
    server: TritonServer,
    restart: Restart,
    say: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Watch a started server until interrupted. On a failure the server is killed (a broken one would wait 10 s
    for the requests it holds) and, within the restart policy, started again, each restart one line via `say`;
    else ServingError, with the reason, ends the watch."""
    restarts: list[float] = []  # monotonic times of the restarts within the window
    while True:
        reason = failure(server)
        if reason is None:
            sleep(restart.interval)
            continue
        while reason is not None:  # a start that fails is one more failure
            server.stop(kill=True, keep_workdir=True)  # kept for the restart; stop() at the end removes it
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < restart.window]
            if restart.policy is RestartPolicy.no:
                raise ServingError(f"{reason}; Triton stopped")
            if len(restarts) >= restart.limit:
                raise ServingError(f"{reason}; Triton stopped ({len(restarts)} restarts in {restart.window:.0f} s)")
            delay = restart.delay(len(restarts))
            restarts.append(now)
            count = f"restart {len(restarts)} of at most {restart.limit} in {restart.window / 60:.0f} min"
            say(f"{reason}; restarting in {delay:.0f} s ({count})")
            sleep(delay)
            started = time.monotonic()
            try:
                server.restart()
                reason = None
                say(f"ready again ({time.monotonic() - started:.1f} s to start)")
            except ServingError as e:
                reason = str(e)
