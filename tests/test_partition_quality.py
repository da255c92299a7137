"""Edge-cut ordering of the partitioners on Cora and on a synthetic graph: metis <= fennel <= random.

DGL's METIS takes no seed and its cut varies by about 2% between runs. On Cora fennel cuts 6%
more than METIS, so the ordering is checked strictly; on the small synthetic graphs the two are
within about 1% of each other, so there METIS may exceed fennel by up to 3% (its own noise).
Not timed; benchmarks/partition_quality.py measures the same on larger graphs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.partitioners import assign, edge_cut
from strata.partitioners.graph import as_graph
from strata.storage.ingest import ingest
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic


def _cuts(url: str, parts: int) -> dict[str, int]:
    graph = as_graph(url)
    return {method: edge_cut(graph, assign(graph, parts, method=method)) for method in ("metis", "fennel", "ldg", "random")}


def _check(cuts: dict[str, int], metis_noise: float = 1.0) -> None:
    assert cuts["metis"] <= metis_noise * cuts["fennel"], cuts
    assert cuts["fennel"] <= cuts["random"], cuts
    assert cuts["fennel"] <= 1.5 * cuts["metis"], cuts
    assert cuts["fennel"] < cuts["ldg"], cuts  # growth + restreaming beat one pass


def test_cut_ordering_on_cora(planetoid_dir: Path, tmp_path: Path) -> None:
    url = str(tmp_path / "cora")
    ingest("planetoid", str(planetoid_dir), url, name="cora")
    _check(_cuts(url, 4))


@pytest.mark.parametrize("kind", ["block", "rmat"])
def test_cut_ordering_on_a_synthetic_graph(kind: str, tmp_path: Path) -> None:
    url = str(tmp_path / kind)
    write_synthetic(SyntheticGraphConfig(num_nodes=20_000, kind=kind, feat_dim=4), url, progress=False)
    _check(_cuts(url, 4), metis_noise=1.03)
