"""One writer at a time: an exclusive lock per thing written (a store, a partition, a pack,
a run directory).

The lock of ``URL`` is the sibling ``.NAME.lock`` (beside it, so it outlives a swap of the
directory itself). On a local path it is an ``fcntl.flock`` on that file: the kernel drops it
when its holder dies, so a lock nobody holds means its last writer is dead. On an object store
(any other fsspec URL) it is a lease object created only if absent, holding an expiry that a
thread of the holder renews; an expired lease is taken over. Either way the file records who
holds it, and a second writer is refused with :class:`LockHeld` naming the holder (host, pid,
since when, doing what)::

    with writer_lock(url, "strata partition"):
        ...  # write url's staged copy and swap it into place
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from strata.errors import StoreError
from strata.storage import fs

LEASE_SECONDS = 120.0
"""How long an object-store lease lasts unless renewed (renewed every third of it)."""


class LockHeld(StoreError):
    """Another writer holds the lock."""


@dataclass
class Holder:
    """Who holds a lock: written into the lock file by its holder."""

    host: str = ""
    pid: int = 0
    since: float = 0.0
    what: str = ""
    expires: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def describe(self) -> str:
        if not self.pid:
            return "another process (it has not recorded itself yet)"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.what or 'a writer'}, pid {self.pid} on host {self.host}, since {when}"

    @classmethod
    def parse(cls, text: str) -> Holder:
        try:
            raw = json.loads(text)
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return cls()


def lock_url(url: str) -> str:
    """Where the lock of ``url`` lives: the hidden sibling ``.NAME.lock``."""
    head, name = posixpath.split(str(url).rstrip("/"))
    return posixpath.join(head, f".{name}.lock") if head else f".{name}.lock"


class WriterLock:
    """The exclusive writer lock of ``url``; see the module docstring. ``what`` says what the
    holder is doing, for the message a second writer gets."""

    def __init__(self, url: str, what: str, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.url = str(url).rstrip("/")
        self.lock = lock_url(self.url)
        self.what = what
        self.lease_seconds = lease_seconds
        self.holder: Holder | None = None
        self._fd: int | None = None
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def held(self) -> bool:
        return self.holder is not None

    def acquire(self) -> Self:
        if self.held:
            return self
        me = Holder(host=socket.gethostname(), pid=os.getpid(), since=time.time(), what=self.what)
        path = fs.local_path(self.lock)
        if path is not None:
            self._fd = _flock(path, me, self.url)
        else:
            me.expires = time.time() + self.lease_seconds
            _take_lease(self.lock, me, self.url)
            self._stop = threading.Event()
            self._renewer = threading.Thread(target=self._renew, name=f"lease {self.lock}", daemon=True)
            self._renewer.start()
        self.holder = me
        return self

    def release(self) -> None:
        if not self.held:
            return
        if self._fd is not None:
            try:
                os.unlink(fs.local_path(self.lock))  # while still held: a waiter that locks this inode sees it gone
            except FileNotFoundError:
                pass
            os.close(self._fd)  # drops the flock
            self._fd = None
        else:
            self._stop.set()
            try:
                if _read_holder(self.lock).token == self.holder.token:
                    fs.remove(self.lock)
            except OSError:
                pass
        self.holder = None

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            holder = self.holder
            if holder is None:
                return
            holder.expires = time.time() + self.lease_seconds
            try:
                if _read_holder(self.lock).token == holder.token:
                    fs.write_text(self.lock, json.dumps(asdict(holder)))
            except OSError:
                pass  # tried again at the next renewal, well before the lease runs out

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter teardown; the kernel drops the flock anyway
            pass


def readers_url(url: str) -> str:
    """Where the readers of ``url`` register: the hidden sibling ``.NAME.readers``."""
    head, name = posixpath.split(str(url).rstrip("/"))
    return posixpath.join(head, f".{name}.readers") if head else f".{name}.readers"


class ReaderLock:
    """A shared lock held by a job that reads ``url`` for its whole run (a training): an
    overwrite of ``url`` is refused while any is held (:func:`refuse_if_read`), instead of
    pulling the store from under the job. Local paths only; on object stores nothing is held
    (their readers are not known). The ``.NAME.readers`` file stays beside the store."""

    def __init__(self, url: str) -> None:
        self.url = str(url).rstrip("/")
        self._fd: int | None = None

    def acquire(self) -> Self:
        path = fs.local_path(readers_url(self.url))
        if path is None or self._fd is not None or not os.path.isdir(os.path.dirname(path) or "."):
            return self
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out an overwrite's swap, which is short
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def refuse_if_read(url: str) -> Iterator[None]:
    """Hold off new readers of ``url`` in the block, or refuse at once if a job reads it now."""
    path = fs.local_path(readers_url(url))
    if path is None or not os.path.exists(path):
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise StoreError(
                f"'{url}' is being read by a running training; replacing it now would pull the store from under it. "
                "Wait for the training to end, or write the new store to another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def writer_lock(url: str, what: str) -> WriterLock:
    """``with writer_lock(url, "strata pack"):`` holds the writer lock of ``url`` in the block."""
    return WriterLock(url, what)


def _refusal(url: str, holder: Holder) -> LockHeld:
    return LockHeld(
        f"'{url}' is being written by {holder.describe()}; wait for it to finish, or stop it "
        f"(a writer that died releases its lock by itself)"
    )


def _flock(path: str, me: Holder, url: str) -> int:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _wait_for_record(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _refusal(url, holder) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            data = json.dumps(asdict(me)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            return fd
        os.close(fd)  # the previous holder removed this file as we locked it: lock the new one


def _wait_for_record(fd: int, tries: int = 5) -> Holder:
    """The holder recorded in a lock file (it writes itself in right after locking)."""
    holder = Holder()
    for _ in range(tries):
        holder = Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder.pid:
            break
        time.sleep(0.02)
    return holder


def _read_holder(url: str) -> Holder:
    return Holder.parse(fs.read_text(url)) if fs.exists(url) else Holder()


def _take_lease(url: str, me: Holder, target: str) -> None:
    fsys, path = fs.get_fs(url)
    fsys.makedirs(posixpath.dirname(path), exist_ok=True)
    for _ in range(2):
        try:
            try:
                with fsys.open(path, "xb") as f:  # create only if absent
                    f.write(json.dumps(asdict(me)).encode())
            except (ValueError, NotImplementedError):  # a filesystem without it: check, then write
                if fsys.exists(path):
                    raise FileExistsError(path) from None
                fs.write_text(url, json.dumps(asdict(me)))
        except FileExistsError:
            holder = _read_holder(url)
            if holder.expires and holder.expires < time.time():
                fs.remove(url)  # its holder stopped renewing it: dead
                continue
            raise _refusal(target, holder) from None
        if _read_holder(url).token != me.token:  # a store without create-if-absent lost a race
            raise _refusal(target, _read_holder(url))
        return
    raise _refusal(target, _read_holder(url))
