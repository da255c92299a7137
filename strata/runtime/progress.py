"""Progress of a long step for people and for logs: a bar on a terminal, otherwise a line in the
log when the step starts, about every half minute, and at its end.

The command line decides who sees the lines (logging at INFO: rank 0, not with --quiet); a job
run without a terminal (a batch job, a pipe, ``tee``) then says what it is doing instead of
nothing for minutes. Only what is printed differs: nothing here touches training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tqdm.auto import tqdm

log = logging.getLogger("strata.progress")

LOG_EVERY_SECONDS = 30.0
"""How often a :class:`ProgressLog` writes a line while its step runs."""


class Progress(Protocol):
    """The part of tqdm's interface that long steps use."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


def progress_bar(*, total: int, initial: int = 0, desc: str, unit: str = "step", enabled: bool) -> Progress:
    """A tqdm bar when ``enabled`` (a person watches a terminal), else a :class:`ProgressLog`."""
    if enabled:
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return ProgressLog(total=total, initial=initial, desc=desc, unit=unit)


class ProgressLog:
    """Progress as log lines, e.g. ``train: step 120 of 2,000 (6%), epoch 1, loss 0.3120; 2.10 steps/s,
    about 15m left``: at the first update, then at most every ``every`` seconds, and at :meth:`close`."""

    def __init__(
        self, *, total: int, initial: int = 0, desc: str, unit: str = "step", every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.every = LOG_EVERY_SECONDS if every is None else every
        self.clock = clock
        self.started, self.first = clock(), initial
        self.logged_at: float | None = None
        self.logged_n = initial
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        if not log.isEnabledFor(logging.INFO):
            return
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= self.every:
            self._write(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True) -> None:
        self.postfix = dict(ordered_dict or {})

    def close(self) -> None:
        if self.n > self.first and log.isEnabledFor(logging.INFO):
            self._write(self.clock(), done=True)

    def line(self, now: float, *, done: bool = False) -> str:
        """What :meth:`update` and :meth:`close` log at time ``now``."""
        where = f"{self.desc}: {self.unit} {self.n:,}"
        if self.total:
            where += f" of {self.total:,} ({100 * self.n / self.total:.0f}%)"
        parts = [where, *(f"{key} {value}" for key, value in self.postfix.items())]
        seconds = now - self.started
        rate = (self.n - self.first) / seconds if seconds > 0 else 0.0
        timing = []
        if rate > 0:
            timing.append(f"{rate:.2f} {self.unit}s/s")
        if done:
            timing.append(f"done in {_duration(seconds)}")
        elif rate > 0 and self.total > self.n:
            timing.append(f"about {_duration((self.total - self.n) / rate)} left")
        return ", ".join(parts) + (f"; {', '.join(timing)}" if timing else "")

    def _write(self, now: float, *, done: bool = False) -> None:
        log.info("%s", self.line(now, done=done))
        self.logged_at, self.logged_n = now, self.n


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
