"""METIS is refused up front, with its memory estimate, when the graph would not fit."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import PartitionError
from strata.partitioners.assign import assign
from strata.partitioners.graph import CSCGraph
from strata.partitioners.metis import metis_memory_estimate
from strata.storage.ingest.common import edges_to_csc


def _ring(n: int) -> CSCGraph:
    src = np.arange(n)
    return CSCGraph(*edges_to_csc(src, (src + 1) % n, n, symmetrize=True, where="ring"))


def test_metis_is_refused_with_its_estimate_when_over_the_limit() -> None:
    g = _ring(1000)
    need = metis_memory_estimate(g.num_nodes, g.num_edges)
    with pytest.raises(PartitionError, match=r"METIS on graph \(1,000 nodes, 2,000 edges\) would need about .* --method fennel"):
        assign(g, 2, method="metis", memory_limit_bytes=need - 1)
    parts = assign(g, 2, method="metis", memory_limit_bytes=need)
    assert sorted(np.bincount(parts).tolist()) == [500, 500]
    with pytest.raises(PartitionError, match="memory_limit_bytes must be >= 0"):
        assign(g, 2, method="metis", memory_limit_bytes=-1)
