"""Turning edge lists into the store's CSC arrays, with the checks every reader needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from strata.errors import IngestError, StoreError
from strata.storage.store import DatasetMeta, DatasetWriter, as_features


@dataclass
class GraphData:
    """A whole graph data set in memory, as readers of small formats produce it."""

    num_nodes: int
    src: np.ndarray
    dst: np.ndarray
    feat: np.ndarray
    label: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)


def edges_to_csc(
    src: np.ndarray, dst: np.ndarray, num_nodes: int, *, symmetrize: bool, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the graph with edges src -> dst, duplicates and self loops removed."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    for name, ids in (("source", src), ("destination", dst)):
        if ids.dtype.kind not in "iu":
            raise IngestError(f"{where}: edge {name} ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise IngestError(
                f"{where}: edge {name} id {bad} is out of range for {num_nodes} nodes (0..{num_nodes - 1})"
            )
    if src.shape != dst.shape:
        raise IngestError(f"{where}: {src.shape[0]} edge sources but {dst.shape[0]} destinations")
    if symmetrize:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    keep = src != dst
    src, dst = src[keep].astype(np.int64), dst[keep].astype(np.int64)
    ones = np.ones(len(src), dtype=np.int8)
    # rows = sources, columns = destinations: CSC groups in-edges by destination.
    adj = sp.csc_matrix((ones, (src, dst)), shape=(num_nodes, num_nodes))
    adj.sum_duplicates()
    adj.sort_indices()
    return adj.indptr.astype(np.int64), adj.indices.astype(np.int64)


def write_graph_data(
    data: GraphData,
    url: str,
    name: str,
    *,
    symmetrize: bool,
    overwrite: bool = False,
    allow_nan: bool = False,
    source: str = "",
) -> DatasetMeta:
    """Validate ``data`` and write it as a complete store at ``url``."""
    n = int(data.num_nodes)
    try:
        feat = as_features(data.feat)
    except StoreError as exc:
        raise IngestError(f"{source or name}: {exc}") from exc
    label = np.asarray(data.label)
    if feat.shape[0] != n:
        raise IngestError(f"{source or name}: features have {feat.shape[0]} rows but the graph has {n} nodes")
    if label.shape[0] != n:
        raise IngestError(f"{source or name}: labels have {label.shape[0]} entries but the graph has {n} nodes")
    indptr, indices = edges_to_csc(data.src, data.dst, n, symmetrize=symmetrize, where=source or name)
    with DatasetWriter(url, name, num_nodes=n, overwrite=overwrite, allow_nan=allow_nan, source=source) as writer:
        writer.write_graph(indptr, indices)
        writer.write_node_data(feat, label, data.splits)
        return writer.commit(symmetrized=symmetrize)
