"""A damaged or crafted store is refused when it is opened or read, naming the array and the
chunk, before any kernel sees it: through `strata train` in real processes, and in-process for
the cache of the bounds checks and the refusal of schema-1 stores."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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
import contextlib, io, json, sys
from strata.launch.cli import main
results = {}
for name, job, run_dir in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", job, "-q", "--set", f"run_dir={run_dir}"])
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_training_refuses_each_damaged_or_crafted_store_naming_array_and_chunk(clean_store: str, tmp_path: Path) -> None:
    """Each case is one `strata train` through the command line's entry point, all in one real
    process (torch is imported once): a native crash on any of them fails the test."""
    runs = []
    for name, (damage, _) in CASES.items():
        url = str(tmp_path / name)
        shutil.copytree(clean_store, url)
        damage(url)
        job = tmp_path / f"{name}.yaml"
        job.write_text(JOB.format(store=url))
        runs.append((name, str(job), str(tmp_path / "runs" / name)))
    proc = subprocess.run([sys.executable, "-c", TRAIN_EACH, json.dumps(runs)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the trainings crashed the process (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = _marker(clean_store)
    for name, (code, err) in results.items():
        expected = CASES[name][1]
        if "%d" in expected:
            key = layout.INDICES if name == "indices" else layout.split_key("train")
            expected = expected % (meta["arrays"][key]["shape"][0] - 1)
        assert code == 2, f"{name}: rc {code}\n{err}"
        assert expected in err and "is corrupt" in err and "Traceback" not in err, f"{name}:\n{err}"
        assert not (tmp_path / "runs" / name / "checkpoints").exists(), name


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
