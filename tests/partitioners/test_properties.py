"""Property tests of built partitions on random directed graphs, checked against brute force."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.partitioners.assign import assign
from strata.partitioners.build import build
from strata.partitioners.format import open_partition
from strata.partitioners.graph import CSCGraph, as_graph
from strata.storage.ingest.common import GraphData, edges_to_csc, write_graph_data
from strata.storage.store import DatasetStore


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 30))
    m = draw(st.integers(0, 4 * n))
    src = np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), dtype=np.int64)
    dst = np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), dtype=np.int64)
    return n, src, dst


def _store(n: int, src: np.ndarray, dst: np.ndarray, train: np.ndarray) -> str:
    url = f"memory://strata-partprop-{uuid.uuid4().hex[:8]}/g"
    data = GraphData(n, src, dst, np.zeros((n, 1), np.float32), np.zeros(n, np.int64), {"train": train})
    write_graph_data(data, url, "g", symmetrize=False)
    return url


def _cleanup(url: str) -> None:
    memory = fsspec.filesystem("memory")
    root = url.replace("memory://", "/").rsplit("/", 1)[0]
    if memory.exists(root):
        memory.rm(root, recursive=True)


def _upstream_distances(n: int, edges: set[tuple[int, int]], sources: set[int], hops: int) -> dict[int, int]:
    """Brute-force BFS against edge direction: node -> hops to reach the set ``sources``."""
    preds: dict[int, list[int]] = {v: [] for v in range(n)}
    for u, v in edges:
        preds[v].append(u)
    dist = {v: 0 for v in sources}
    frontier = set(sources)
    for hop in range(1, hops + 1):
        nxt = {u for v in frontier for u in preds[v] if u not in dist}
        for u in nxt:
            dist[u] = hop
        frontier = nxt
    return dist


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    graph=graphs(),
    method=st.sampled_from(["random", "range", "metis", "ldg", "fennel"]),
    parts=st.integers(1, 6),
    hops=st.integers(1, 3),
    seed=st.integers(0, 3),
)
def test_built_partitions_match_brute_force(graph, method, parts, hops, seed) -> None:
    n, src, dst = graph
    k = min(parts, n)
    train = np.arange(0, n, 2)
    url = _store(n, src, dst, train)
    try:
        store = DatasetStore.open(url)
        indptr, indices = store.csc()
        edges = {(int(indices[e]), int(v)) for v in range(n) for e in range(indptr[v], indptr[v + 1])}
        assignment = assign(store, k, seed, method=method, chunk_edges=5)
        report = build(store, assignment, "p", hops, num_parts=k)
        pset = open_partition(url, "p")
        np.testing.assert_array_equal(pset.assignment(), assignment)

        parts_loaded = [pset.part(p) for p in range(k)]
        owned_all = np.concatenate([part.owned for part in parts_loaded])
        # Every node is owned by exactly one part, the one the assignment names.
        np.testing.assert_array_equal(np.sort(owned_all), np.arange(n))
        halos: list[set[int]] = []
        for p, part in enumerate(parts_loaded):
            owned = set(part.owned.tolist())
            assert owned == set(np.flatnonzero(assignment == p).tolist())
            dist = _upstream_distances(n, edges, owned, hops)
            halo = {v for v, d in dist.items() if d > 0}
            # The halo is exactly the non-owned nodes within h hops upstream, ordered by hop.
            assert set(part.halo.tolist()) == halo
            assert len(part.halo) == len(halo)
            assert part.halo_per_hop == [sum(1 for d in dist.values() if d == h) for h in range(1, hops + 1)]
            assert [dist[v] for v in part.halo.tolist()] == sorted(dist[v] for v in part.halo.tolist())
            halos.append(halo)

            l2g = part.local_to_global
            local_edges = set()
            for v in range(part.num_local):
                for e in range(part.indptr[v], part.indptr[v + 1]):
                    u = int(part.indices[e])
                    global_edge = (int(l2g[u]), int(l2g[v]))
                    # Every local edge is a global edge, and edge_ids points at it.
                    assert global_edge in edges
                    eid = int(part.edge_ids[e])
                    assert indices[eid] == l2g[u] and indptr[l2g[v]] <= eid < indptr[l2g[v] + 1]
                    local_edges.add(global_edge)
            local_nodes = set(l2g.tolist())
            # Every edge with both ends local is there; in particular all in-edges of owned nodes.
            assert local_edges == {(u, v) for u, v in edges if u in local_nodes and v in local_nodes}
            assert {(u, v) for u, v in edges if v in owned} <= local_edges
            np.testing.assert_array_equal(part.global_to_local(l2g), np.arange(part.num_local))

        for p, part in enumerate(parts_loaded):
            others = set().union(*(halos[q] for q in range(k) if q != p)) if k > 1 else set()
            assert part.boundary.tolist() == [v in others for v in part.owned.tolist()]

        cut = sum(1 for u, v in edges if assignment[u] != assignment[v])
        assert report.edge_cut == cut
        assert report.communication_volume == sum(len(h) for h in halos)
        assert report.replication_factor == pytest.approx((n + sum(len(h) for h in halos)) / n)
        assert report.nodes.per_part == np.bincount(assignment, minlength=k).tolist()
        assert report.train_nodes.per_part == np.bincount(assignment[train], minlength=k).tolist()
        assert sum(report.edges.per_part) == len(edges)
    finally:
        _cleanup(url)


@settings(max_examples=50, deadline=None)
@given(graph=graphs(), chunk_edges=st.integers(1, 40))
def test_iter_chunks_covers_the_csc_whatever_the_chunk_size(graph, chunk_edges) -> None:
    n, src, dst = graph
    indptr, indices = edges_to_csc(src, dst, n, symmetrize=False, where="t")
    g = CSCGraph(indptr, indices)
    seen_nodes, rebuilt = 0, []
    for chunk in g.iter_chunks(chunk_edges):
        assert chunk.start == seen_nodes and chunk.stop > chunk.start
        np.testing.assert_array_equal(chunk.indptr, indptr[chunk.start : chunk.stop + 1] - indptr[chunk.start])
        rebuilt.append(chunk.indices)
        seen_nodes = chunk.stop
    assert seen_nodes == n
    np.testing.assert_array_equal(np.concatenate(rebuilt) if rebuilt else np.empty(0), indices)


@settings(max_examples=30, deadline=None)
@given(graph=graphs(), parts=st.integers(1, 5), method=st.sampled_from(["ldg", "fennel"]), slack=st.sampled_from([0.0, 0.05, 0.5]))
def test_streaming_respects_capacity_and_ignores_chunking(graph, parts, method, slack) -> None:
    n, src, dst = graph
    k = min(parts, n)
    g = CSCGraph(*edges_to_csc(src, dst, n, symmetrize=False, where="t"))
    small = assign(g, k, method=method, balance_slack=slack, chunk_edges=1)
    large = assign(g, k, method=method, balance_slack=slack, chunk_edges=1 << 20)
    np.testing.assert_array_equal(small, large)
    cap = int(np.ceil((1 + slack) * n / k))
    assert np.bincount(small, minlength=k).max() <= cap


def test_store_and_memory_give_the_same_assignment(tiny_store: str) -> None:
    store = DatasetStore.open(tiny_store)
    in_memory = CSCGraph(*store.csc())
    for method in ("ldg", "fennel", "random", "range"):
        np.testing.assert_array_equal(assign(store, 3, method=method, chunk_edges=64), assign(in_memory, 3, method=method))
    assert as_graph(tiny_store).num_edges == store.meta.num_edges
