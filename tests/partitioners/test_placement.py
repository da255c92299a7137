"""The streaming partitioners' placement loop gives the same parts compiled (numba) and in Python."""

from __future__ import annotations

import numpy as np
import pytest

from strata.partitioners import placement
from strata.partitioners.assign import assign
from strata.partitioners.graph import CSCGraph
from strata.storage.ingest.common import edges_to_csc


@pytest.mark.parametrize("method", ["fennel", "ldg"])
def test_compiled_and_python_loops_place_alike(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not placement.compiled():
        pytest.skip("numba is not installed: only the Python loop runs here (nothing to compare it with)")
    rng = np.random.default_rng(3)
    n, m = 3000, 20000
    graph = CSCGraph(*edges_to_csc(rng.integers(0, n, m), rng.integers(0, n // 2, m), n, symmetrize=False, where="t"))
    compiled = assign(graph, 5, seed=2, method=method, balance_slack=0.02, chunk_edges=777)
    monkeypatch.setattr(placement, "_compiled", None)
    python = assign(graph, 5, seed=2, method=method, balance_slack=0.02, chunk_edges=777)
    np.testing.assert_array_equal(compiled, python)
    assert np.bincount(compiled, minlength=5).max() <= int(np.ceil(1.02 * n / 5))
