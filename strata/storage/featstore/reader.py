"""Reading a pack (format in :mod:`strata.storage.featstore.format`): block records, feature
segments and the hot rows, each checked against its marker before use.

A local pack is read in place. A pack on a remote filesystem (anything but local files) is
staged a group at a time into a local spill directory, so each group crosses the network
once, in one sequential transfer, and the per-step reads are local; staged groups are
dropped once they are behind the reader.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from strata.errors import PackError
from strata.storage import fs
from strata.storage.featstore import format as fmt
from strata.storage.featstore.caches import FeatureCounters
from strata.storage.featstore.sampling import SampledBatch
from strata.storage.markers import read_marker


def is_local(url: str) -> bool:
    fsys, _ = fs.get_fs(url)
    protocols = fsys.protocol if isinstance(fsys.protocol, tuple) else (fsys.protocol,)
    return "file" in protocols or "local" in protocols


def _read_range(url: str, offset: int, length: int) -> bytearray:
    """``length`` bytes at ``offset`` (fewer if the file is shorter), into a writable buffer."""
    fsys, path = fs.get_fs(url)
    buf = bytearray(length)
    with fsys.open(path, "rb") as f:
        f.seek(offset)
        view, got = memoryview(buf), 0
        while got < length:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    return buf if got == length else buf[:got]


class _Stager:
    """Copies remote group folders into a local spill directory and drops old ones."""

    def __init__(self, spill_dir: str, keep: int = 3) -> None:
        self.owned = not spill_dir
        self.root = spill_dir or tempfile.mkdtemp(prefix="strata-spill-")
        fs.makedirs(self.root)
        if self.owned:  # a reader nobody closes still leaves no spill behind
            weakref.finalize(self, shutil.rmtree, self.root, True)
        self.keep = keep
        self._lock = threading.Lock()
        self._staged: OrderedDict[str, str] = OrderedDict()
        self._users: dict[str, int] = {}
        self._staging: dict[str, threading.Event] = {}

    def acquire(self, remote_gdir: str, name: str) -> str:
        while True:
            with self._lock:
                if name in self._staged:
                    self._users[name] = self._users.get(name, 0) + 1
                    return self._staged[name]
                wait = self._staging.get(name)
                if wait is None:
                    self._staging[name] = threading.Event()
                    break
            wait.wait()
        local = fs.join(self.root, name.replace("/", "_"))
        staged = False
        try:
            fsys, path = fs.get_fs(remote_gdir)
            fsys.get(path.rstrip("/") + "/", local + "/", recursive=True)
            staged = True
        finally:
            with self._lock:
                done = self._staging.pop(name)
                if staged:
                    self._staged[name] = local
                    self._users[name] = self._users.get(name, 0) + 1
                    self._evict()
            done.set()
            if not staged:
                shutil.rmtree(local, ignore_errors=True)
        return local

    def release(self, name: str) -> None:
        with self._lock:
            self._users[name] -= 1
            self._evict()

    def _evict(self) -> None:
        while len(self._staged) > self.keep:
            idle = next((n for n in self._staged if not self._users.get(n)), None)
            if idle is None:
                return
            shutil.rmtree(self._staged.pop(idle), ignore_errors=True)
            self._users.pop(idle, None)

    def close(self) -> None:
        with self._lock:
            for local in self._staged.values():
                shutil.rmtree(local, ignore_errors=True)
            self._staged.clear()
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


class PackReader:
    """A complete pack opened for reading; every read is checked and counted."""

    def __init__(
        self,
        url: str,
        manifest: fmt.PackManifest,
        summary: fmt.PackSummary,
        *,
        verify: bool = True,
        spill_dir: str = "",
        counters: FeatureCounters | None = None,
    ) -> None:
        self.url = url
        self.manifest = manifest
        self.summary = summary
        self.verify = verify
        self.dtype = np.dtype(manifest.dtype)
        self.counters = counters or FeatureCounters()
        self._stager = None if is_local(url) else _Stager(spill_dir)
        self._lock = threading.Lock()
        self._indexes: dict[tuple[str, str], fmt.GroupIndex] = {}

    @classmethod
    def open(
        cls,
        url: str,
        expected: dict[str, Any] | None = None,
        *,
        verify: bool = True,
        spill_dir: str = "",
        counters: FeatureCounters | None = None,
    ) -> PackReader:
        """Open the pack at ``url``; ``expected`` are the fingerprint fields of the run it must serve."""
        url = str(url).rstrip("/")
        manifest_url = fs.join(url, fmt.MANIFEST)
        if not fs.exists(manifest_url):
            raise PackError(f"no pack at '{url}' (no {fmt.MANIFEST}); write one with 'strata pack'")
        manifest = fmt.PackManifest.from_json(fs.read_text(manifest_url), url)
        if expected is not None and fmt.fingerprint(expected) != manifest.fingerprint:
            diff = fmt.differences(manifest.fields, expected) or ["its fingerprint does not match its recorded fields"]
            raise PackError(
                f"pack '{url}' was made for another run and is refused: {'; '.join(diff)}. "
                "Re-run 'strata pack' with this run's store, fanouts, batch size, seed and epochs, "
                "or point features.pack_dir at the pack made for it"
            )
        done = read_marker(fs.join(url, fmt.PACK_MARKER))
        if done is None:
            raise PackError(
                f"pack '{url}' is incomplete (no {fmt.PACK_MARKER}): its packing was interrupted; "
                "re-run the same 'strata pack' command to finish it"
            )
        return cls(url, manifest, fmt.PackSummary.from_json(done, url), verify=verify, spill_dir=spill_dir, counters=counters)

    def close(self) -> None:
        if self._stager is not None:
            self._stager.close()

    # -- hot rows --------------------------------------------------------------------------

    def hot_ids(self) -> np.ndarray:
        """Hot node ids, hottest first."""
        marker = self._hot_marker()
        data = fs.read_bytes(fs.join(self.url, fmt.HOT_IDS))
        if len(data) != 8 * marker["rows"] or fmt.crc32(data) != marker["ids_crc"]:
            raise PackError(f"pack '{self.url}': hot/ids.bin is truncated or corrupt; re-run 'strata pack --overwrite'")
        self.counters.add_other(cache_fill=len(data))
        return np.frombuffer(data, dtype="<i8").astype(np.int64)

    def hot_rows(self, count: int) -> np.ndarray:
        """Feature rows of the ``count`` hottest nodes, (count, F), read in one pass."""
        marker = self._hot_marker()
        count = min(count, marker["rows"])
        want = count * self.manifest.row_bytes
        piece = fmt.HOT_PIECE_BYTES
        span = min(-(-want // piece) * piece, marker["rows"] * self.manifest.row_bytes)
        data = _read_range(fs.join(self.url, fmt.HOT_FEAT), 0, span) if span else bytearray()
        self.counters.add_other(cache_fill=len(data))
        if len(data) != span:
            raise PackError(f"pack '{self.url}': hot/feat.bin is truncated ({len(data)} of {span} bytes); re-run 'strata pack --overwrite'")
        if self.verify:
            for i, start in enumerate(range(0, span, piece)):
                if fmt.crc32(data[start : start + piece]) != marker["feat_crc_pieces"][i]:
                    raise PackError(f"pack '{self.url}': hot/feat.bin fails its checksum; re-run 'strata pack --overwrite'")
        return np.frombuffer(data, dtype=self.dtype, count=count * self.manifest.feat_dim).reshape(count, self.manifest.feat_dim)

    def _hot_marker(self) -> dict[str, Any]:
        text = read_marker(fs.join(self.url, fmt.HOT_MARKER))
        if text is None:
            raise PackError(f"pack '{self.url}' has no {fmt.HOT_MARKER}; it is incomplete; re-run 'strata pack'")
        return json.loads(text)

    # -- steps -----------------------------------------------------------------------------

    def record(self, epoch: int, step: int) -> SampledBatch:
        """The sampled blocks of (epoch, step)."""
        buf, _ = self._read(epoch, step, fmt.BLOCKS, fmt.BLOCKS_MARKER)
        where = f"pack '{self.url}' epoch {epoch} step {step}"
        entry = self._entry(epoch, step, fmt.BLOCKS_MARKER)
        if len(buf) != entry.length or fmt.crc32(buf) != entry.crc:
            raise PackError(f"{where}: the block record is truncated or fails its checksum; re-run 'strata pack --overwrite'")
        self.counters.add_other(blocks=len(buf))
        return fmt.decode_record(buf, where)

    def segment(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(hot rank of each input node or -1, the packed rows of those at -1 in input order)."""
        t0 = time.perf_counter()
        buf, entry = self._read(epoch, step, fmt.FEAT, fmt.FEAT_MARKER)
        ranks, rows = fmt.check_segment(
            buf, entry, epoch, step, self.manifest.feat_dim, self.dtype, self.verify, f"pack '{self.url}'"
        )
        self.counters.add("packed", entry.rows, len(buf), time.perf_counter() - t0)
        return ranks, rows

    def _entry(self, epoch: int, step: int, marker: str) -> fmt.Entry:
        if not (0 <= epoch < self.manifest.epochs and 0 <= step < self.manifest.steps_per_epoch):
            raise PackError(
                f"pack '{self.url}' holds {self.manifest.epochs} epochs of {self.manifest.steps_per_epoch} steps; "
                f"epoch {epoch} step {step} is not in it"
            )
        group, pos = self.manifest.group_of(step)
        gdir = fmt.group_name(epoch, group)
        with self._lock:
            index = self._indexes.get((gdir, marker))
        if index is None:
            text = read_marker(fs.join(self.url, gdir, marker))
            if text is None:
                raise PackError(f"pack '{self.url}': group {gdir} has no {marker}; the pack is incomplete; re-run 'strata pack'")
            index = fmt.GroupIndex.from_json(text, f"{self.url}/{gdir}")
            with self._lock:
                self._indexes[(gdir, marker)] = index
        if pos >= len(index.entries):
            raise PackError(f"pack '{self.url}': group {gdir} lists {len(index.entries)} steps, step {step} is missing")
        return index.entries[pos]

    def _read(self, epoch: int, step: int, name: str, marker: str) -> tuple[bytearray, fmt.Entry]:
        entry = self._entry(epoch, step, marker)
        gdir = fmt.group_name(epoch, self.manifest.group_of(step)[0])
        if self._stager is None:
            return _read_range(fs.join(self.url, gdir, name), entry.offset, entry.length), entry
        local = self._stager.acquire(fs.join(self.url, gdir), gdir)
        try:
            return _read_range(fs.join(local, name), entry.offset, entry.length), entry
        finally:
            self._stager.release(gdir)
