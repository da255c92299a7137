"""The streaming partition build: the same files whatever the chunk size and the grouping of
parts, and the per-edge files written behind their header as the edges stream in."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import PartitionError
from strata.partitioners.build import build
from strata.partitioners.format import open_partition
from strata.partitioners.part_files import NpyAppender
from strata.storage import fs

ARRAYS = ("local_to_global", "indptr", "indices", "edge_ids", "boundary")


@pytest.mark.parametrize("hops", [1, 2])
def test_chunking_and_grouping_of_parts_do_not_change_what_is_built(tiny_store: str, hops: int) -> None:
    assignment = (np.arange(50, dtype=np.int32) * 7) % 3
    whole = build(tiny_store, assignment, "whole", hops, num_parts=3)
    # 5 edges a chunk (destinations are never split: a chunk may hold more) and one part's marks at a time.
    pieces = build(tiny_store, assignment, "pieces", hops, num_parts=3, chunk_edges=5, mask_bytes=1)
    assert (pieces.edge_cut, pieces.halo, pieces.edges) == (whole.edge_cut, whole.halo, whole.edges)
    a, b = open_partition(tiny_store, "whole"), open_partition(tiny_store, "pieces")
    for p in range(3):
        pa, pb = a.part(p), b.part(p)
        assert (pa.num_owned, pa.halo_per_hop) == (pb.num_owned, pb.halo_per_hop)
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))
            assert fs.read_bytes(fs.join(a.url, f"part-{p}", f"{name}.npy")) == fs.read_bytes(fs.join(b.url, f"part-{p}", f"{name}.npy"))
        assert pa.indptr[-1] == len(pa.indices) > 0


def test_an_appended_npy_file_loads_and_holds_what_its_header_says(store_root: str) -> None:
    url = fs.join(store_root, "a.npy")
    out = NpyAppender(url, np.int64, 5)
    out.append(np.array([1, 2], np.int32))
    out.append(np.array([3, 4, 5]))
    out.close()
    loaded = np.load(fs.get_fs(url)[0].open(fs.get_fs(url)[1], "rb"))
    assert loaded.dtype == np.int64 and loaded.tolist() == [1, 2, 3, 4, 5]
    short = NpyAppender(fs.join(store_root, "b.npy"), np.int64, 3)
    short.append(np.zeros(2))
    with pytest.raises(PartitionError, match="2 values written, its header announced 3"):
        short.close()
    with pytest.raises(PartitionError, match="more than the 1 values"):
        NpyAppender(fs.join(store_root, "c.npy"), np.int64, 1).append(np.zeros(2))
