"""A damaged or crafted store is refused when it is opened or read, naming the array and the
chunk, before any kernel sees it: through `strata train` in real processes, and in-process for
the cache of the bounds checks and the refusal of schema-1 stores. The run-directory lock's
test shares the training processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from strata.errors import StoreError
from strata.storage import fs, layout, verify
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore

NODES = 300
JOB = """
name: j
data: {{store: {store}}}
model: {{name: sage, hidden: 8, num_layers: 2, dropout: 0.0}}
train: {{mode: minibatch, epochs: 1, lr: 0.01, batch_size: 64, fanouts: [3, 3], seed: 7}}
"""


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("clean") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=NODES, avg_degree=4, num_classes=3, feat_dim=4, seed=3), url, progress=False)
    return url


def _marker(url: str) -> dict[str, Any]:
    return json.loads(Path(url, layout.MARKER).read_text())


def _craft(url: str, key: str, change: Any) -> None:
    """Rewrite ``key`` through zarr (so every chunk's crc32c is right) with ``change`` applied,
    and recompute its checksum in the marker: a store crafted to pass 'strata info --verify'."""
    group = zarr.open_group(fs.zarr_store(url, "w"), mode="r+")
    values = np.asarray(group[key][:])
    change(values)
    group[key][:] = values
    marker = _marker(url)
    digest = hashlib.blake2b(values.astype(values.dtype.newbyteorder("<")).tobytes(), digest_size=16).hexdigest()
    marker["arrays"][key]["checksum"] = digest
    Path(url, layout.MARKER).write_text(json.dumps(marker))


def _flip_byte(url: str, key: str) -> None:
    chunk = Path(url, key, verify.chunk_file(key, len(_marker(url)["arrays"][key]["shape"]), 0))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))


def _widen(url: str, key: str) -> None:
    group = zarr.open_group(fs.zarr_store(url, "w"), mode="r+")
    old = group[key]
    values = np.concatenate([old[:], np.ones((old.shape[0], 1), old.dtype)], axis=1)
    del group[key]
    group.create_array(key, shape=values.shape, chunks=(old.chunks[0], values.shape[1]), dtype=values.dtype,
                       compressors=old.compressors, config={"write_empty_chunks": True})[:] = values


def _setitem(index: int, value: int) -> Any:
    return lambda values: values.__setitem__(index, value)


CASES = {
    "deleted-chunk": (lambda url: os.remove(Path(url, layout.FEAT, "c", "0", "0")),
                      "array 'node/feat' lacks chunk 0 (rows 0..299, file node/feat/c/0/0)"),
    "flipped-byte": (lambda url: _flip_byte(url, layout.FEAT),
                     "array 'node/feat' chunk 0 (rows 0..299, file node/feat/c/0/0) cannot be decoded"),
    "widened-array": (lambda url: _widen(url, layout.FEAT),
                      "array 'node/feat' has shape [300, 5] but the marker says [300, 4]"),
    "indptr": (lambda url: _craft(url, layout.INDPTR, _setitem(5, 10**12)),
               "array 'graph/indptr' chunk 0 (rows 0..300), row 6 decreases"),
    "indices": (lambda url: _craft(url, layout.INDICES, _setitem(3, -1)),
                "array 'graph/indices' chunk 0 (rows 0..%d), row 3 holds node id -1, out of range for 300 nodes"),
    "labels": (lambda url: _craft(url, layout.LABEL, _setitem(7, 99)),
               "array 'node/label' chunk 0 (rows 0..299), row 7 holds label 99; labels are -1 (unknown) or class ids 0..2"),
    "split-ids": (lambda url: _craft(url, layout.split_key("train"), _setitem(0, NODES + 5)),
                  "array 'node/split/train' chunk 0 (rows 0..%d), row 0 holds node id 305, out of range"),
}


TRAIN_EACH = """
import contextlib, io, json, sys, time
from strata.launch.cli import main

def stopped_holder(lock):
    # the training that holds the run directory, once the test has stopped it (SIGSTOP)
    while True:
        try:
            pid = json.loads(open(lock).read())["pid"]
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
                return pid
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)

results = {}
for name, job, run_dir, wait_for in json.loads(sys.argv[1]):
    if wait_for:
        stopped_holder(wait_for)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", job, "-q", "--set", f"run_dir={run_dir}"])
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def trainings(clean_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case of this file that trains, in two real processes (torch is imported twice, not
    nine times): a training on the clean store into runs/shared, stopped (SIGSTOP) once it holds
    that run directory, and one process that trains through the command line's entry point on
    each damaged store, then into runs/shared. A native crash there fails every test using it."""
    root = tmp_path_factory.mktemp("trainings")
    runs = []
    for name, (damage, _) in CASES.items():
        url = str(root / name)
        shutil.copytree(clean_store, url)
        damage(url)
        (root / f"{name}.yaml").write_text(JOB.format(store=url))
        runs.append((name, str(root / f"{name}.yaml"), str(root / "runs" / name), ""))
    (root / "clean.yaml").write_text(JOB.format(store=clean_store))
    lock = root / "runs" / "shared" / ".checkpoints.lock"
    runs.append(("second", str(root / "clean.yaml"), str(root / "runs" / "shared"), str(lock)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "strata.launch.cli", "train", str(root / "clean.yaml"), "-q",
                              "--set", f"run_dir={root / 'runs' / 'shared'}"], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    each = subprocess.Popen([sys.executable, "-c", TRAIN_EACH, json.dumps(runs)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            try:
                if json.loads(lock.read_text()).get("pid") == first.pid:
                    first.send_signal(signal.SIGSTOP)
                    break
            except (FileNotFoundError, ValueError):
                time.sleep(0.005)
        each_out, each_err = each.communicate(timeout=240)
    finally:
        first.send_signal(signal.SIGCONT)
        each.kill()
    first_out, first_err = first.communicate(timeout=240)
    return {"root": root, "first": (first.pid, first.returncode, first_err), "each": (each.returncode, each_out, each_err), "lock": lock}


def _results(trainings: dict[str, Any]) -> dict[str, list]:
    code, out, err = trainings["each"]
    assert code == 0, f"the trainings crashed the process (rc {code}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def test_training_refuses_each_damaged_or_crafted_store_naming_array_and_chunk(clean_store: str, trainings: dict) -> None:
    meta = _marker(clean_store)
    results = _results(trainings)
    for name in CASES:
        code, err = results[name]
        expected = CASES[name][1]
        if "%d" in expected:
            key = layout.INDICES if name == "indices" else layout.split_key("train")
            expected = expected % (meta["arrays"][key]["shape"][0] - 1)
        assert code == 2, f"{name}: rc {code}\n{err}"
        assert expected in err and "is corrupt" in err and "Traceback" not in err, f"{name}:\n{err}"
        assert not (trainings["root"] / "runs" / name / "checkpoints").exists(), name


def test_a_second_training_into_a_run_directory_in_use_is_refused_naming_the_first(trainings: dict) -> None:
    """(The lock of strata.runtime.checkpointing.claim; here to share the processes above.)"""
    code, err = _results(trainings)["second"]
    pid, first_code, first_err = trainings["first"]
    assert code == 2 and "Traceback" not in err, err
    assert f"is being written by strata train, pid {pid} on host {socket.gethostname()}" in err, err
    assert "give this one another run_dir" in err
    assert first_code == 0, first_err  # the first one finishes, its checkpoint kept
    checkpoints = trainings["root"] / "runs" / "shared" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith("step-")] == ["step-00000003"]
    assert not trainings["lock"].exists()


def test_the_bounds_checks_run_once_per_content_and_a_copied_cache_vouches_for_nothing(clean_store: str, tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    shutil.copytree(clean_store, url)  # new files: the cache the writer left is stale
    store = DatasetStore.open(url)
    listing = verify.check_structure(url, store.meta, store.group)
    assert verify.check_content(store, listing) is False  # open() just checked and cached it
    good_cache = Path(url, layout.CHECKED).read_text()

    _craft(url, layout.INDICES, _setitem(0, NODES))  # crafted, with the checked result of the clean store beside it
    Path(url, layout.CHECKED).write_text(good_cache)
    with pytest.raises(verify.CorruptStore, match="'graph/indices' chunk 0 .* row 0 holds node id 300"):
        DatasetStore.open(url)
    DatasetStore.open(url, check=False)  # what 'strata info --verify' does to report it

    _craft(url, layout.INDICES, _setitem(0, 1))  # repaired: checked again, and passes
    store = DatasetStore.open(url)
    listing = verify.check_structure(url, store.meta, store.group)
    assert verify.check_content(store, listing) is False


def test_a_store_written_before_chunk_checksums_is_refused_with_what_to_do(clean_store: str, tmp_path: Path) -> None:
    url = str(tmp_path / "v1")
    shutil.copytree(clean_store, url)
    marker = _marker(url)
    marker["schema_version"] = 1
    Path(url, layout.MARKER).write_text(json.dumps(marker))
    with pytest.raises(StoreError, match="schema version 1, written by an older strata without per-chunk checksums.*--overwrite"):
        DatasetStore.open(url)


def test_a_chunk_damaged_after_opening_is_named_when_read(clean_store: str, tmp_path: Path) -> None:
    url = str(tmp_path / "late")
    shutil.copytree(clean_store, url)
    store = DatasetStore.open(url)
    _flip_byte(url, layout.LABEL)
    with pytest.raises(verify.CorruptStore, match=r"array 'node/label' chunk 0 \(rows 0..299, file node/label/c/0\) cannot be decoded"):
        store.labels()
    assert any("node/label" in problem for problem in store.verify())
