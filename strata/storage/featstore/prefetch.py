"""Loading batches ahead of the training step on background threads.

``prefetched(load, steps, depth, workers)`` yields ``load(step)`` for each step, in order,
while up to ``depth`` later steps are being loaded (or wait, loaded) on ``workers`` threads:
the queue is bounded, so memory is bounded. File reads, checksums and numpy gathers release
the GIL, so the threads overlap I/O and assembly with the training step.

Shutdown is clean on every path: when the consumer stops early, raises, or is interrupted
(Ctrl-C), steps not yet started are cancelled and the threads are joined before the
generator returns. An exception in a worker is re-raised in the consuming thread as a
:class:`FeatureLoadError` naming the step, with the worker's exception as its cause.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from strata.errors import StoreError

T = TypeVar("T")


class FeatureLoadError(StoreError):
    """Loading a batch on a background thread failed; the cause is the worker's exception."""


def prefetched(load: Callable[[int], T], steps: Iterable[int], *, depth: int, workers: int = 1) -> Iterator[T]:
    """``load(step)`` for each of ``steps`` in order, up to ``depth`` steps loaded ahead."""
    if depth <= 0:
        for step in steps:
            yield load(step)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="strata-prefetch")
    pending: deque[tuple[int, Future[T]]] = deque()
    todo = iter(steps)
    try:
        for step in todo:
            pending.append((step, pool.submit(load, step)))
            if len(pending) >= depth:
                break
        while pending:
            step, future = pending.popleft()
            try:
                result = future.result()
            except Exception as exc:
                raise FeatureLoadError(f"loading the batch of step {step} on a background thread failed: {exc}") from exc
            following = next(todo, None)
            if following is not None:
                pending.append((following, pool.submit(load, following)))
            del future
            yield result
            del result
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
