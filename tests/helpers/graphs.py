"""Small random graphs for tests."""

from __future__ import annotations

import numpy as np


def random_graph(num_nodes: int, num_edges: int, feat_dim: int = 8, num_classes: int = 3, seed: int = 0):
    """A GraphData with random edges, features and labels, and a 50/25/25 split."""
    from strata.storage.ingest.common import GraphData

    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_nodes)
    a, b = num_nodes // 2, (3 * num_nodes) // 4
    return GraphData(
        num_nodes=num_nodes,
        src=rng.integers(0, num_nodes, num_edges),
        dst=rng.integers(0, num_nodes, num_edges),
        feat=rng.standard_normal((num_nodes, feat_dim)).astype(np.float32),
        label=rng.integers(0, num_classes, num_nodes),
        splits={"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])},
    )


def random_node_data(
    num_nodes: int, num_edges: int, *, feat_dim: int, num_classes: int, seed: int, symmetrize: bool, self_loops: bool
):
    """A NodeData (DGL graph, features, labels, splits) over ``random_graph``, for executor tests."""
    import torch

    from strata.runtime.gnn.data import NodeData, to_dgl
    from strata.storage.ingest.common import edges_to_csc

    g = random_graph(num_nodes, num_edges, feat_dim=feat_dim, num_classes=num_classes, seed=seed)
    indptr, indices = edges_to_csc(g.src, g.dst, num_nodes, symmetrize=symmetrize, where="test")
    return NodeData(
        graph=to_dgl(indptr, indices, num_nodes, self_loops=self_loops),
        feat=torch.from_numpy(g.feat),
        label=torch.from_numpy(g.label),
        splits={k: torch.from_numpy(v) for k, v in g.splits.items()},
        num_classes=num_classes,
    )


def awkward_csc(num_src: int, num_dst: int, num_edges: int, seed: int = 0):
    """``(indptr, indices)`` of a Block-shaped CSC (dst nodes first among ``num_src`` src nodes)
    with every case a graph kernel can get wrong: isolated nodes (the last 3 src nodes have no
    edges at all), dst nodes with no in-edges (the first 2), self loops, multi-edges (some
    triple), and rows in no order."""
    rng = np.random.default_rng(seed)
    dst = rng.integers(2, min(num_dst, num_src - 3), num_edges)
    src = rng.integers(0, num_src - 3, num_edges)
    loops = rng.choice(num_edges, num_edges // 10, replace=False)
    src[loops] = np.minimum(dst[loops], num_src - 4)  # self loops (where dst is not isolated)
    twice = rng.choice(num_edges, num_edges // 10, replace=False)
    src = np.concatenate([src, src[twice], src[twice[:3]]])  # multi-edges, some triple
    dst = np.concatenate([dst, dst[twice], dst[twice[:3]]])
    order = np.argsort(dst, kind="stable")  # CSC: grouped by dst, each row in random src order
    indptr = np.zeros(num_dst + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_dst), out=indptr[1:])
    return indptr, src[order].astype(np.int64)
