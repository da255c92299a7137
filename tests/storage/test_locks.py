"""One writer at a time, and a swap that a kill cannot lose: real processes, real signals,
real files (and memory:// for the lease that object stores get)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strata.storage import fs, layout
from strata.storage.ingest.common import write_graph_data
from strata.storage.locks import LockHeld, WriterLock, lock_url
from strata.storage.store import DatasetStore, DatasetWriter
from tests.helpers.cli import run_strata
from tests.helpers.graphs import random_graph

INGEST = ("ingest", "synthetic", "--nodes", "300", "--avg-degree", "4", "--classes", "3", "--feat-dim", "4", "-q")


def _await_holder(lock_file: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The holder record of ``lock_file`` once ``proc`` has written itself in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first writer ended before taking its lock: {proc.communicate()}"
        try:
            holder = json.loads(lock_file.read_text())
            if holder.get("pid") == proc.pid:
                return holder
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    raise AssertionError(f"{lock_file} never named pid {proc.pid}")


def _siblings(url: str) -> list[str]:
    head, name = os.path.split(url)
    return sorted(entry for entry in os.listdir(head) if entry.startswith(f".{name}."))


def test_a_second_lock_is_refused_naming_the_holder_until_released(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    with WriterLock(url, "strata ingest"):
        with pytest.raises(LockHeld, match=rf"being written by strata ingest, pid {os.getpid()} on host {socket.gethostname()}, since 20"):
            WriterLock(url, "strata ingest").acquire()
        assert os.path.exists(lock_url(url))
    assert not os.path.exists(lock_url(url))  # released and removed
    with WriterLock(url, "again"):
        pass


def test_an_object_store_lease_is_refused_while_renewed_and_taken_over_once_expired() -> None:
    url = f"memory://locks-{os.getpid()}-{time.monotonic_ns()}/store"
    first = WriterLock(url, "strata ingest", lease_seconds=1.2).acquire()
    time.sleep(1.5)  # longer than the lease: its renewals keep it
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        WriterLock(url, "second", lease_seconds=1.2).acquire()
    first._stop.set()  # its holder dies: nobody renews the lease
    time.sleep(1.5)
    with WriterLock(url, "second", lease_seconds=1.2) as second:
        assert json.loads(fs.read_text(lock_url(url)))["token"] == second.holder.token
    assert not fs.exists(lock_url(url))


def test_two_concurrent_ingests_into_one_output_one_wins_the_other_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    first = subprocess.Popen([sys.executable, "-m", "strata.launch.cli", "ingest", "synthetic", "--nodes", "20000",
                              "--name", "first", "--out", url, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _await_holder(Path(lock_url(url)), first)
        first.send_signal(signal.SIGSTOP)  # caught mid-write, holding the lock
        second = run_strata(*INGEST, "--name", "second", "--out", url, "--overwrite", check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"'{url}' is being written by strata ingest, pid {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert DatasetStore.open(url).meta.name == "first" and _siblings(url) == []


def test_a_killed_writer_leaves_nothing_the_next_writer_does_not_clear(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    write_graph_data(random_graph(20, 40), url, "old", symmetrize=True)
    script = (
        "import os, signal, sys, numpy as np\n"
        "from strata.storage.store import DatasetWriter\n"
        "w = DatasetWriter(sys.argv[1], 'dying', num_nodes=20, overwrite=True)\n"
        "w.write('node/feat', np.ones((20, 3), np.float32))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = _siblings(url)
    assert any(".partial-" in name for name in left) and f".{Path(url).name}.lock" in left
    assert DatasetStore.open(url).meta.name == "old"  # readers never look at a partial copy
    with DatasetWriter(url, "next", num_nodes=3, overwrite=True) as writer:  # the dead writer's lock is not held
        assert [name for name in _siblings(url) if "partial" in name] == [Path(writer.tmp).name]
        writer.write_graph([0, 1, 2, 2], [1, 2])
        writer.commit()
    assert DatasetStore.open(url).meta.name == "next" and _siblings(url) == []


FORCE_MOVES = "import sys; from strata.storage import fs; fs._exchange = lambda a, b: False; from strata.launch.cli import main; sys.exit(main())"


@pytest.mark.parametrize(
    "point, by_moves, readers_see",
    [("swap:exchanged", False, "new"), ("swap:moved-aside", True, "old"), ("swap:moved-in", True, "new")],
)
def test_a_kill_at_any_point_of_an_overwrite_swap_leaves_a_complete_store(tmp_path: Path, point: str, by_moves: bool, readers_see: str) -> None:
    url = str(tmp_path / "store")
    write_graph_data(random_graph(20, 40), url, "old", symmetrize=True)
    entry = ["-c", FORCE_MOVES] if by_moves else ["-m", "strata.launch.cli"]  # renames where renameat2 is missing
    proc = subprocess.run([sys.executable, *entry, *INGEST, "--name", "new", "--out", url, "--overwrite"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, fs.FAULT_ENV: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = DatasetStore.open(url)  # a reader finds a complete store, never none
    assert store.meta.name == readers_see and store.verify() == []
    with DatasetWriter(url, "third", num_nodes=3, overwrite=True) as writer:  # the next writer restores and clears
        assert DatasetStore.open(url).meta.name == readers_see
        writer.write_graph([0, 1, 2, 2], [1, 2])
        writer.commit()
    assert DatasetStore.open(url).meta.name == "third" and _siblings(url) == []
    assert fs.exists(fs.join(url, layout.MARKER))

