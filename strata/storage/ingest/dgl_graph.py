"""A DGLGraph already in memory (the Python API for users who built one with DGL)."""

from __future__ import annotations

import numpy as np

from strata.errors import IngestError
from strata.storage.ingest.common import GraphData, write_graph_data
from strata.storage.store import DatasetMeta


def ingest_dgl_graph(
    graph: object,
    url: str,
    name: str,
    *,
    feat_key: str = "feat",
    label_key: str = "label",
    symmetrize: bool = False,
    overwrite: bool = False,
    allow_nan: bool = False,
) -> DatasetMeta:
    """Write ``graph`` (homogeneous) with its ``ndata[feat_key]``, ``ndata[label_key]`` and
    ``train_mask``/``val_mask``/``test_mask`` (when present) as a store."""
    ndata = graph.ndata  # type: ignore[attr-defined]
    for key in (feat_key, label_key):
        if key not in ndata:
            raise IngestError(f"the DGL graph has no ndata['{key}'] (it has {', '.join(ndata.keys()) or 'none'})")
    src, dst = graph.edges()  # type: ignore[attr-defined]
    splits = {}
    for split, mask in (("train", "train_mask"), ("valid", "val_mask"), ("test", "test_mask")):
        if mask in ndata:
            splits[split] = np.flatnonzero(ndata[mask].numpy()).astype(np.int64)
    data = GraphData(
        num_nodes=int(graph.num_nodes()),  # type: ignore[attr-defined]
        src=src.numpy(),
        dst=dst.numpy(),
        feat=ndata[feat_key].numpy(),
        label=ndata[label_key].numpy(),
        splits=splits,
    )
    return write_graph_data(
        data, url, name, symmetrize=symmetrize, overwrite=overwrite, allow_nan=allow_nan, source="dgl-graph"
    )
