"""Edge-cut ordering of the partitioners on Cora and on a synthetic graph: metis <= fennel <= random.

DGL's METIS takes no seed and its cut varies between runs (on Cora we have seen 986 to 1,086
cut edges, about 10%), while fennel is deterministic and lands within 1-6% of METIS. A strict
"metis <= fennel" is therefore a coin toss on some runs; the test allows METIS 10% over fennel
(its own noise) and checks strictly what does not depend on that noise: fennel within 1.5x of
METIS, below random and below one-pass LDG. The benchmark records the strict ordering.
Not timed; benchmarks/partition_quality.py measures the same on larger graphs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.partitioners.assign import assign
from strata.partitioners.graph import as_graph
from strata.partitioners.report import edge_cut
from strata.storage.ingest import ingest
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic


def _cuts(url: str, parts: int) -> dict[str, int]:
    """Each method's edge cut; METIS's the best of 3 runs (it takes no seed, and one CI run saw
    1,240 on Cora, outside the range above)."""
    graph = as_graph(url)
    cuts = {method: edge_cut(graph, assign(graph, parts, method=method)) for method in ("fennel", "ldg", "random")}
    return {"metis": min(edge_cut(graph, assign(graph, parts, method="metis")) for _ in range(3)), **cuts}


METIS_NOISE = 1.10


def _check(cuts: dict[str, int]) -> None:
    assert cuts["metis"] <= METIS_NOISE * cuts["fennel"], cuts
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
    _check(_cuts(url, 4))
