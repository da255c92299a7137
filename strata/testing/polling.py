"""Waiting for something that other processes make true: a job's state, a server's answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, *, interval: float = 0.25, alive: Callable[[], None] | None = None) -> T | None:
    """``check()``'s first true value, called every ``interval`` seconds; None once ``timeout``
    seconds pass without one. ``alive()`` runs between calls, to raise early when what was to
    make the check true has died."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        if alive is not None:
            alive()
        time.sleep(interval)
