"""All file I/O of strata goes through fsspec here, so any URL (a plain path, ``file://``,
``memory://``, ``s3://``) works wherever a path is taken."""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import signal
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from strata.errors import StoreError


def get_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and the filesystem-native path of ``url``; a URL whose protocol fsspec
    does not know, or whose filesystem package is not installed, is a StoreError naming it."""
    try:
        fs, path = fsspec.core.url_to_fs(str(url))
    except ValueError as exc:
        if "protocol not known" not in str(exc).lower():
            raise
        protocol = str(url).split("://", 1)[0]
        raise StoreError(
            f"'{url}': fsspec knows no protocol '{protocol}'. Use a plain path, file://, memory://, or the URL of a "
            "filesystem whose fsspec package is installed (s3:// needs s3fs, gs:// gcsfs, az:// adlfs)"
        ) from exc
    except ImportError as exc:
        raise StoreError(f"'{url}' needs a filesystem package that is not installed: {exc}") from exc
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join path segments onto a URL without touching its scheme."""
    url = str(url).rstrip("/")
    return posixpath.join(url, *[p.strip("/") for p in parts if p])


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.isdir(path)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(url: str, data: bytes) -> None:
    fs, path = get_fs(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def listdir(url: str) -> list[str]:
    """Base names of the entries directly under ``url`` (empty when it does not exist)."""
    fs, path = get_fs(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str) -> None:
    """Remove a file or a directory tree; a missing one is not an error."""
    fs, path = get_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``; a rename on local disks, copy-then-delete on object stores."""
    fs, src_path = get_fs(src)
    _, dst_path = get_fs(dst)
    parent = posixpath.dirname(dst_path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.mv(src_path, dst_path, recursive=True)


def sibling_temp(url: str, tag: str = "partial") -> str:
    """A fresh path beside ``url`` (same filesystem, so a later move is a rename)."""
    url = str(url).rstrip("/")
    head, name = posixpath.split(url)
    return posixpath.join(head, f".{name}.{tag}-{uuid.uuid4().hex[:8]}")


FAULT_ENV = "STRATA_FAULT_AT"
"""Tests set it to a point of :func:`replace_atomically` (``swap:exchanged``, ``swap:moved-aside``,
``swap:moved-in``) to have the process SIGKILLed there, as a crash would."""


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def local_path(url: str) -> str | None:
    """The local filesystem path of ``url``, or None for any other filesystem."""
    url = str(url)
    if "://" not in url:
        return url
    return url[len("file://") :] if url.startswith("file://") else None


def replace_atomically(tmp: str, dst: str) -> None:
    """Put the finished tree ``tmp`` at ``dst``, so that at every instant ``dst`` holds the old
    tree or the new one.

    On a local disk that is one rename, or for a directory replacing a directory one atomic
    exchange (``renameat2(RENAME_EXCHANGE)``) after which ``tmp`` holds the old tree and is
    removed. Elsewhere (object stores, or where the exchange is unsupported) the old tree is
    moved aside to ``.NAME.old-*`` first: a crash between the two moves leaves ``dst`` absent
    for a moment, and then readers take the moved-aside tree (:func:`swapped_out`) and the next
    writer moves it back (:func:`clean_stale`)."""
    src_path, dst_path = local_path(tmp), local_path(dst)
    if src_path is not None and dst_path is not None:
        if not os.path.lexists(dst_path):
            os.makedirs(os.path.dirname(dst_path.rstrip("/")) or ".", exist_ok=True)
            os.rename(src_path, dst_path)
            return
        if os.path.isdir(dst_path) != os.path.isdir(src_path):
            raise IsADirectoryError(f"cannot replace '{dst}' by '{tmp}': one is a directory, the other a file")
        if not os.path.isdir(dst_path):
            os.replace(src_path, dst_path)
            return
        if _exchange(src_path, dst_path):
            _fault_point("swap:exchanged")
            remove(tmp)
            return
    _replace_by_moves(tmp, dst)


def _replace_by_moves(tmp: str, dst: str) -> None:
    old = None
    if exists(dst):
        old = sibling_temp(dst, "old")
        move(dst, old)
        _fault_point("swap:moved-aside")
    try:
        move(tmp, dst)
    except BaseException:
        if old is not None and not exists(dst):
            move(old, dst)
        raise
    _fault_point("swap:moved-in")
    if old is not None:
        remove(old)


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths atomically (Linux renameat2); False where that is unsupported."""
    rename_exchange, at_fdcwd = 2, -100
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), a)


def _siblings(url: str, tag: str) -> list[str]:
    head, name = posixpath.split(str(url).rstrip("/"))
    prefix = f".{name}.{tag}-"
    return [posixpath.join(head, entry) for entry in listdir(head or ".") if entry.startswith(prefix)]


def swapped_out(url: str) -> str | None:
    """Where the complete tree of ``url`` is while ``url`` is absent because a writer died
    between the two moves of :func:`replace_atomically` (None: nowhere)."""
    if exists(url):
        return None
    old = _siblings(url, "old")
    return old[0] if old else None


def clean_stale(url: str) -> list[str]:
    """Under ``url``'s writer lock: move a tree that a dead writer left moved aside back into
    place, and remove the ``.NAME.partial-*`` and ``.NAME.old-*`` siblings dead writers left.
    Returns what was removed."""
    restored = swapped_out(url)
    if restored is not None:
        move(restored, url)
    removed = _siblings(url, "partial") + _siblings(url, "old")
    for path in removed:
        remove(path)
    return removed


def write_atomically(url: str, data: bytes | str) -> None:
    """Write one file through a fresh sibling moved into place: a reader sees the old content or
    the new, never part of it."""
    tmp = sibling_temp(url)
    write_bytes(tmp, data.encode("utf-8") if isinstance(data, str) else data)
    replace_atomically(tmp, url)


def zarr_store(url: str, mode: str = "r") -> Any:
    """A zarr v3 store for ``url``: LocalStore for plain paths, FsspecStore otherwise.

    zarr 3.1 through fsspec fails to write ``zarr.json`` into a missing local directory unless
    ``auto_mkdir`` is set, so ``file://`` URLs get it.
    """
    from zarr.storage import FsspecStore, LocalStore

    url = str(url)
    read_only = mode == "r"
    if "://" not in url:
        return LocalStore(url, read_only=read_only)
    options = {"auto_mkdir": True} if url.startswith("file://") else None
    return FsspecStore.from_url(url, storage_options=options, read_only=read_only)
