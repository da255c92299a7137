"""Completion markers, and directories written in a hidden sibling and moved into place complete.

Every directory strata writes for others to read (a dataset store, a partition, a checkpoint,
a pack's pieces) says it is whole with a completion marker: a small JSON file written after
everything it describes. A reader takes the directory only when its marker is there
(:func:`read_marker`), and reads the marker's fields leniently, so a newer writer's extra
fields do not break an older reader (:func:`marker_fields`). Stores and partitions go
further: they are written under a hidden sibling of their final URL (:class:`StagedDir`) and
moved into place only once sealed (:func:`seal`), so the final URL holds the previous complete
directory or the new one. A :class:`StagedDir` made with ``lock=`` holds the writer lock of
its URL (:mod:`strata.storage.locks`) until it is sealed or aborted, and first clears what
dead writers left beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any, Self, TypeVar

from strata.storage import fs
from strata.storage.locks import WriterLock

T = TypeVar("T")
log = logging.getLogger(__name__)


def read_marker(url: str) -> str | None:
    """The text of the completion marker at ``url``, or None when there is none (the directory
    it vouches for was not fully written)."""
    return fs.read_text(url) if fs.exists(url) else None


def marker_json(fields: Any) -> str:
    """The JSON text of the dataclass ``fields``, as every marker is written (keys sorted)."""
    return json.dumps(dataclasses.asdict(fields), indent=1, sort_keys=True)


def marker_fields(cls: type[T], text: str, error: Callable[[Exception], Exception]) -> T:
    """The dataclass ``cls`` from a marker's JSON ``text``, ignoring keys ``cls`` does not know
    (a newer writer's): the reverse of :func:`marker_json`. Text that is not JSON, or lacks a
    field, raises ``error(exc)``."""
    try:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise error(exc) from exc


def seal(tmp: str, url: str, marker: str, text: str) -> None:
    """Write the completion marker ``marker`` into the finished directory ``tmp``, last, then
    move the directory to ``url``; an old ``url`` is kept until the new one is in place."""
    fs.write_text(fs.join(tmp, marker), text)
    fs.replace_atomically(tmp, url)


class StagedDir:
    """A directory written under a hidden sibling of ``url`` (``self.tmp``) and moved into place
    by :func:`seal` once complete.

    Use as a context manager: leaving the block with an exception removes the partial
    directory and leaves whatever was at ``url`` untouched; leaving it at all releases the lock.
    With ``lock`` (what the writer does, e.g. ``"strata partition"``) the writer lock of ``url``
    is taken first, or :class:`~strata.storage.locks.LockHeld` names its holder; holding it,
    the partial and moved-aside copies that dead writers left beside ``url`` are cleared.
    """

    def __init__(self, url: str, *, lock: str = "") -> None:
        self.url = str(url).rstrip("/")
        self.lock = WriterLock(self.url, lock).acquire() if lock else None
        if self.lock is not None:
            for path in fs.clean_stale(self.url):
                log.warning("removed %s, left by a writer of %s that died", path, self.url)
        self.tmp = fs.sibling_temp(self.url)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self.lock is not None:
            self.lock.release()

    def abort(self) -> None:
        fs.remove(self.tmp)
        if self.lock is not None:
            self.lock.release()
