"""Partitioners: the assign interface, bad input, the on-disk format and its atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strata.errors import PartitionError, StoreError
from strata.partitioners import build as pbuild
from strata.partitioners import format as pformat
from strata.partitioners.assign import PARTITIONERS, assign
from strata.partitioners.build import build, partition_store
from strata.partitioners.config import PartitionConfig
from strata.partitioners.format import list_partitions, open_partition
from strata.partitioners.graph import CSCGraph
from strata.storage import fs, layout
from strata.storage.ingest.common import edges_to_csc
from strata.storage.store import DatasetStore, DatasetWriter


def _ring(n: int) -> CSCGraph:
    src = np.arange(n)
    return CSCGraph(*edges_to_csc(src, (src + 1) % n, n, symmetrize=True, where="ring"))


@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_every_method_gives_one_valid_part_per_node(method: str) -> None:
    g = _ring(60)
    parts = assign(g, 4, seed=1, method=method)
    assert parts.dtype == np.int32 and parts.shape == (60,)
    assert set(np.unique(parts).tolist()) == {0, 1, 2, 3}
    sizes = np.bincount(parts, minlength=4)
    assert sizes.max() <= 1.1 * 60 / 4 + 1
    if method != "metis":  # DGL's METIS takes no seed and may differ between runs
        np.testing.assert_array_equal(parts, assign(g, 4, seed=1, method=method))


def test_random_is_balanced_and_seeded_and_range_is_contiguous() -> None:
    g = _ring(103)
    a, b = assign(g, 4, seed=0, method="random"), assign(g, 4, seed=1, method="random")
    assert np.bincount(a).tolist() in ([26, 26, 26, 25],) and not np.array_equal(a, b)
    r = assign(g, 4, method="range")
    assert np.all(np.diff(r) >= 0) and np.bincount(r).max() - np.bincount(r).min() <= 1


def test_streaming_partitioners_cut_a_ring_into_arcs() -> None:
    # A ring cut into 4 balanced parts needs only 4 cut edges each way; random cuts ~3/4 of them.
    g = _ring(400)
    indptr, indices = g.csc()
    dst = np.repeat(np.arange(400), np.diff(indptr))
    for method in ("fennel", "ldg"):
        parts = assign(g, 4, method=method)
        assert (parts[indices] != parts[dst]).sum() <= 40, method
    random_cut = (assign(g, 4, method="random")[indices] != assign(g, 4, method="random")[dst]).sum()
    assert random_cut > 400


def test_metis_keeps_stdout_clean_and_handles_one_part(capfd: pytest.CaptureFixture[str]) -> None:
    g = _ring(50)
    parts = assign(g, 2, method="metis")
    out, err = capfd.readouterr()
    assert out == "" and "Metis" not in err and "metis" not in err.lower()
    assert sorted(np.bincount(parts).tolist()) == [25, 25]
    np.testing.assert_array_equal(assign(g, 1, method="metis"), np.zeros(50, np.int32))


def test_metis_balances_training_nodes() -> None:
    # Training nodes all in the first half of a ring: node balance alone would put them in one part.
    n = 200
    src = np.arange(n)
    indptr, indices = edges_to_csc(src, (src + 1) % n, n, symmetrize=True, where="ring")
    parts = assign(CSCGraph(indptr, indices, np.arange(n // 2)), 2, method="metis")
    per_part = np.bincount(parts[: n // 2], minlength=2)
    assert per_part.min() >= 0.4 * (n // 2)


@pytest.mark.parametrize("parts", [0, -1, 61])
def test_bad_number_of_parts_is_refused(parts: int) -> None:
    with pytest.raises(PartitionError, match="parts"):
        assign(_ring(60), parts, method="fennel")


def test_unknown_method_and_option_are_refused() -> None:
    with pytest.raises(PartitionError, match="must be one of random, range, metis, ldg, fennel, got 'kmeans'"):
        assign(_ring(10), 2, method="kmeans")
    with pytest.raises(PartitionError, match="unknown partition option"):
        assign(_ring(10), 2, method="fennel", pases=3)
    with pytest.raises(PartitionError, match="halo_hops"):
        PartitionConfig(halo_hops=0)
    with pytest.raises(PartitionError, match="plain folder name"):
        PartitionConfig(name="../x")


def test_store_without_graph_is_refused(store_root: str) -> None:
    url = fs.join(store_root, "nograph")
    with DatasetWriter(url, "nograph", num_nodes=5) as writer:
        writer.write(layout.FEAT, np.zeros((5, 2), np.float32))
        writer.commit()
    with pytest.raises(PartitionError, match="holds no graph"):
        assign(url, 2, method="fennel")
    with pytest.raises(PartitionError, match="holds no graph"):
        build(url, np.zeros(5, np.int32), "p")
    with pytest.raises(StoreError, match="does not exist"):
        assign(fs.join(store_root, "missing"), 2)


def test_partition_is_written_atomically_and_refuses_overwrite(tiny_store: str) -> None:
    cfg = PartitionConfig(method="fennel", num_parts=3, halo_hops=2)
    report = partition_store(tiny_store, cfg)
    assert list_partitions(tiny_store) == ["fennel-3"]
    pset = open_partition(tiny_store, "fennel-3")
    assert pset.num_parts == 3 and pset.info.halo_hops == 2
    assert pset.report().edge_cut == report.edge_cut
    assert json.loads(fs.read_text(fs.join(pset.url, "report.json")))["num_parts"] == 3

    with pytest.raises(PartitionError, match="already exists.*--overwrite"):
        partition_store(tiny_store, cfg)
    with pytest.raises(PartitionError, match="already exists"):
        build(tiny_store, pset.assignment(), "fennel-3")

    # A build that fails half-way leaves the previous partition as it was and no debris.
    class Boom(Exception):
        pass

    original = pbuild.write_part
    calls = []

    def failing(root, **part):
        calls.append(root)
        if len(calls) == 2:
            raise Boom()
        original(root, **part)

    pbuild.write_part = failing
    try:
        with pytest.raises(Boom):
            build(tiny_store, np.zeros(50, np.int32), "fennel-3", overwrite=True, num_parts=3)
    finally:
        pbuild.write_part = original
    assert fs.listdir(fs.join(tiny_store, "partitions")) == ["fennel-3"]
    np.testing.assert_array_equal(open_partition(tiny_store, "fennel-3").assignment(), pset.assignment())

    partition_store(tiny_store, PartitionConfig(method="range", num_parts=2, name="fennel-3", overwrite=True))
    assert open_partition(tiny_store, "fennel-3").num_parts == 2


def test_reader_refuses_incomplete_missing_and_stale_partitions(tiny_store: str) -> None:
    build(tiny_store, np.arange(50, dtype=np.int32) % 2, "p")
    url = pformat.partition_url(tiny_store, "p")
    marker = fs.join(url, pformat.MARKER)
    text = fs.read_text(marker)

    with pytest.raises(PartitionError, match="no partition 'q' \\(it has: p\\)"):
        open_partition(tiny_store, "q")
    fs.remove(marker)
    assert list_partitions(tiny_store) == []
    with pytest.raises(PartitionError, match="no completion marker: it was not fully written"):
        open_partition(tiny_store, "p")
    info = json.loads(text)
    info["graph_checksum"] = "0" * 32
    fs.write_text(marker, json.dumps(info))
    with pytest.raises(PartitionError, match="built for a different graph"):
        open_partition(tiny_store, "p")
    fs.write_text(marker, text)
    pset = open_partition(DatasetStore.open(tiny_store), "p")
    with pytest.raises(PartitionError, match="parts 0..1"):
        pset.part(2)
    fs.remove(fs.join(url, "part-1", "indices.npy"))
    with pytest.raises(PartitionError, match="missing"):
        pset.part(1)


def test_bad_assignments_are_refused(tiny_store: str) -> None:
    with pytest.raises(PartitionError, match="one part id per node"):
        build(tiny_store, np.zeros(49, np.int32), "p")
    with pytest.raises(PartitionError, match="integer"):
        build(tiny_store, np.zeros(50), "p")
    with pytest.raises(PartitionError, match="part ids must be in 0..1"):
        build(tiny_store, np.full(50, 2), "p", num_parts=2)


def test_empty_parts_are_written_and_readable(tiny_store: str) -> None:
    report = build(tiny_store, np.zeros(50, np.int32), "p", num_parts=3)
    assert report.nodes.per_part == [50, 0, 0] and report.edge_cut == 0
    empty = open_partition(tiny_store, "p").part(2)
    assert empty.num_local == 0 and len(empty.indptr) == 1
    assert empty.global_to_local(np.array([0, 1])).tolist() == [-1, -1]
