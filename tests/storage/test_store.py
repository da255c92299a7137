"""The dataset store: round trips on every backend, atomic completion, checksums, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import StoreError
from strata.storage import fs, layout
from strata.storage.ingest.common import write_graph_data
from strata.storage.store import DatasetStore, DatasetWriter
from tests.helpers.graphs import random_graph


def _chunk_files(url: str, key: str) -> list[str]:
    fsys, path = fs.get_fs(fs.join(url, key))
    return sorted(p for p in fsys.find(path) if not p.endswith("zarr.json"))


def test_round_trip_keeps_every_array(store_root: str) -> None:
    data = random_graph(40, 150, feat_dim=5)
    url = f"{store_root}/rt"
    meta = write_graph_data(data, url, "rt", symmetrize=False)
    store = DatasetStore.open(url)
    indptr, indices = store.csc()
    assert store.meta.num_nodes == 40 and meta.num_edges == len(indices)
    # Every stored in-edge is an input edge, without self loops or duplicates.
    stored = {(int(s), v) for v in range(40) for s in indices[indptr[v] : indptr[v + 1]]}
    given = {(int(s), int(d)) for s, d in zip(data.src, data.dst) if s != d}
    assert stored == given
    np.testing.assert_array_equal(store.features(), data.feat)
    np.testing.assert_array_equal(store.labels(), data.label)
    for split in layout.SPLITS:
        np.testing.assert_array_equal(store.split(split), data.splits[split])
    assert store.meta.num_classes == int(data.label.max()) + 1
    assert store.verify() == []


def test_chunked_appends_equal_one_write(store_root: str) -> None:
    feat = np.random.default_rng(1).standard_normal((1000, 3)).astype(np.float32)
    with DatasetWriter(f"{store_root}/a", "a", num_nodes=1000) as w:
        app = w.appender(layout.FEAT, np.float32, (3,), chunk_rows=64)
        for start in range(0, 1000, 137):
            app.append(feat[start : start + 137])
        meta_a = w.commit()
    with DatasetWriter(f"{store_root}/b", "b", num_nodes=1000) as w:
        w.write(layout.FEAT, feat, chunk_rows=500)
        meta_b = w.commit()
    np.testing.assert_array_equal(DatasetStore.open(f"{store_root}/a").features(), feat)
    # The checksum covers logical content, not chunking.
    assert meta_a.arrays[layout.FEAT]["checksum"] == meta_b.arrays[layout.FEAT]["checksum"]


def test_missing_path_is_named(store_root: str) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        DatasetStore.open(f"{store_root}/nothing-here")


def test_half_written_store_is_refused(tiny_store: str) -> None:
    fs.remove(fs.join(tiny_store, layout.MARKER))
    with pytest.raises(StoreError, match="no completion marker: it was not fully written"):
        DatasetStore.open(tiny_store)


def test_failed_write_leaves_nothing_and_keeps_the_old_store(store_root: str) -> None:
    url = f"{store_root}/keep"
    write_graph_data(random_graph(10, 20), url, "old", symmetrize=True)
    with pytest.raises(StoreError, match="out of range"):
        with DatasetWriter(url, "new", num_nodes=10, overwrite=True) as w:
            w.write(layout.INDICES, np.array([0, 1, 99]))
    assert DatasetStore.open(url).meta.name == "old"
    parent = url.rsplit("/", 1)[0]
    assert [n for n in fs.listdir(parent) if "partial" in n] == []


def test_truncated_chunk_is_reported_with_its_array(tiny_store: str) -> None:
    chunk = _chunk_files(tiny_store, layout.FEAT)[0]
    fsys, _ = fs.get_fs(tiny_store)
    with fsys.open(chunk, "rb") as f:
        data = f.read()
    with fsys.open(chunk, "wb") as f:
        f.write(data[: len(data) // 2])
    store = DatasetStore.open(tiny_store)
    with pytest.raises(StoreError, match="'node/feat'.*cannot be decoded"):
        store.features()
    assert any("node/feat" in p for p in store.verify())


def test_verify_catches_changed_content(store_root: str) -> None:
    url = f"{store_root}/flip"
    write_graph_data(random_graph(30, 60), url, "flip", symmetrize=True)
    import zarr

    group = zarr.open_group(fs.zarr_store(url, "w"), mode="r+")
    group[layout.LABEL][3] = int(group[layout.LABEL][3]) + 1
    problems = DatasetStore.open(url).verify()
    assert problems == ["'node/label' checksum mismatch: content changed since it was written"]


def test_existing_store_needs_overwrite(tiny_store: str) -> None:
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        DatasetWriter(tiny_store, "again", num_nodes=3)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: setattr(d, "dst", np.append(d.dst[:-1], 50)), "id 50 is out of range for 50 nodes"),
        (lambda d: setattr(d, "label", d.label[:-1]), "labels have 49 entries but the graph has 50 nodes"),
        (lambda d: setattr(d, "feat", d.feat[:-2]), "features have 48 rows but the graph has 50 nodes"),
        (lambda d: d.feat.__setitem__((7, 1), np.nan), "NaN or infinite values \\(first at node 7\\)"),
        (lambda d: setattr(d, "feat", d.feat.astype(str)), "must be numeric"),
        (lambda d: setattr(d, "src", d.src.astype(np.float64) + 0.5), "must be integers"),
    ],
    ids=["node-id-out-of-range", "label-length", "feature-length", "nan-features", "string-features", "float-edge-ids"],
)
def test_bad_graph_input_is_named_and_writes_nothing(store_root: str, mutate, message: str) -> None:
    data = random_graph(50, 100)
    mutate(data)
    url = f"{store_root}/bad"
    with pytest.raises(Exception, match=message):
        write_graph_data(data, url, "bad", symmetrize=True)
    assert not fs.exists(url)


def test_nan_features_allowed_when_asked(store_root: str) -> None:
    data = random_graph(20, 40)
    data.feat[3, 0] = np.nan
    write_graph_data(data, f"{store_root}/nan", "nan", symmetrize=True, allow_nan=True)
    assert np.isnan(DatasetStore.open(f"{store_root}/nan").features()[3, 0])


def test_appending_the_wrong_dtype_is_refused(store_root: str) -> None:
    with DatasetWriter(f"{store_root}/d", "d", num_nodes=4) as w:
        app = w.appender(layout.INDICES, np.int64)
        with pytest.raises(StoreError, match="'graph/indices' is int64, but a block of dtype int32"):
            app.append(np.array([1, 2], dtype=np.int32))


def test_indptr_must_match_indices(store_root: str) -> None:
    with pytest.raises(StoreError, match="graph/indptr ends at 3 but graph/indices holds 2 edges"):
        with DatasetWriter(f"{store_root}/p", "p", num_nodes=3) as w:
            w.write_graph(np.array([0, 1, 2, 3]), np.array([1, 2]))
            w.commit()
    assert not fs.exists(f"{store_root}/p")
