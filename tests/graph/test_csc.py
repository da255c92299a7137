"""The CSC helpers of strata.graph.csc, against brute force and against DGL."""

from __future__ import annotations

import numpy as np
import pytest

from strata.graph.csc import edge_dst, edge_ranges, graph_csc, induced_subgraph, with_self_loops


def _graph(n: int = 40, m: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dst = np.sort(rng.integers(0, n, m))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))]).astype(np.int64)
    return indptr, rng.integers(0, n, m).astype(np.int64)


def test_edge_ranges_are_the_in_edges_of_the_nodes_in_the_order_given() -> None:
    indptr, _ = _graph()
    nodes = np.array([7, 0, 7, 39, 12], dtype=np.int64)
    offsets, edge_ids = edge_ranges(indptr, nodes)
    expected = [np.arange(indptr[v], indptr[v + 1]) for v in nodes]
    assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(e) for e in expected])]).tolist()
    assert edge_ids.tolist() == np.concatenate(expected).tolist()
    assert edge_ids.dtype == offsets.dtype == np.int64
    empty = edge_ranges(indptr, np.empty(0, dtype=np.int64))
    assert empty[0].tolist() == [0] and len(empty[1]) == 0
    assert edge_dst(indptr).tolist() == [v for v in range(len(indptr) - 1) for _ in range(indptr[v + 1] - indptr[v])]


@pytest.mark.parametrize("shuffle", [False, True])
def test_induced_subgraph_keeps_every_edge_inside_in_csc_order(shuffle: bool) -> None:
    indptr, indices = _graph(seed=1)
    rng = np.random.default_rng(2)
    nodes = np.sort(rng.choice(40, 15, replace=False)).astype(np.int64)
    if shuffle:
        nodes = rng.permutation(nodes)
    scratch = np.full(40, -1, dtype=np.int64)
    sub = induced_subgraph(indptr, indices, nodes, scratch)
    assert (scratch == -1).all()
    local = {int(v): i for i, v in enumerate(nodes)}
    for i, v in enumerate(nodes):
        eids = [e for e in range(indptr[v], indptr[v + 1]) if int(indices[e]) in local]
        row = slice(sub.indptr[i], sub.indptr[i + 1])
        assert sub.edge_ids[row].tolist() == eids
        assert sub.indices[row].tolist() == [local[int(indices[e])] for e in eids]
    again = induced_subgraph(indptr, indices, nodes)  # without scratch: the same
    assert all(np.array_equal(getattr(sub, f), getattr(again, f)) for f in ("indptr", "indices", "edge_ids"))


def test_self_loops_and_graph_csc_match_dgl() -> None:
    from strata.runtime.gnn.data import to_dgl

    n = 300
    indptr, indices = _graph(n, 3000, seed=1)
    indices[:50] = edge_dst(indptr)[:50]  # some self loops to drop
    for loops in (False, True):
        ours = with_self_loops(indptr, indices) if loops else (indptr, indices)
        theirs = graph_csc(to_dgl(indptr, indices, n, self_loops=loops))
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
    loops_indptr, loops_indices = with_self_loops(indptr, indices)
    assert (np.diff(loops_indptr) >= 1).all() and (loops_indices[loops_indptr[1:] - 1] == np.arange(n)).all()
    assert ((loops_indices == edge_dst(loops_indptr)).sum()) == n


def test_self_loops_keep_a_compact_graph_int32_with_the_same_edges() -> None:
    rng = np.random.default_rng(3)
    n = 300
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 9, n))]).astype(np.int64)
    indices = rng.integers(0, n, int(indptr[-1])).astype(np.int64)
    indices[indptr[:-1][indptr[1:] > indptr[:-1]]] = np.flatnonzero(indptr[1:] > indptr[:-1])  # some loops already there
    wide = with_self_loops(indptr, indices)
    narrow = with_self_loops(indptr, indices.astype(np.int32))
    assert narrow[1].dtype == np.int32 and wide[1].dtype == np.int64
    np.testing.assert_array_equal(narrow[0], wide[0])
    np.testing.assert_array_equal(narrow[1], wide[1])
