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
