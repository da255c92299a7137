"""All file I/O of strata goes through fsspec here, so any URL (a plain path, ``file://``,
``memory://``, ``s3://``) works wherever a path is taken."""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def get_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and the filesystem-native path of ``url``."""
    fs, path = fsspec.core.url_to_fs(str(url))
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


def replace_atomically(tmp: str, dst: str) -> None:
    """Put the finished tree ``tmp`` at ``dst``; an old ``dst`` is kept until the new one is in place."""
    old = None
    if exists(dst):
        old = sibling_temp(dst, "old")
        move(dst, old)
    try:
        move(tmp, dst)
    except BaseException:
        if old is not None and not exists(dst):
            move(old, dst)
        raise
    if old is not None:
        remove(old)


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
