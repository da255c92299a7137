"""The OGB node-property layout, as the OGB package unpacks it::

    SOURCE/raw/edge.csv.gz            src,dst per line (no header)
    SOURCE/raw/node-feat.csv.gz       F comma-separated floats per node
    SOURCE/raw/node-label.csv.gz      one class id per node (may be NaN for unlabelled nodes)
    SOURCE/raw/num-node-list.csv.gz   optional: the node count
    SOURCE/split/<scheme>/{train,valid,test}.csv.gz   node ids, one per line

Features are streamed into the store in blocks, so the CSV is never held whole in memory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from strata.errors import IngestError
from strata.storage import fs, layout
from strata.storage.ingest.common import edges_to_csc
from strata.storage.store import DatasetMeta, DatasetWriter, as_features

_BLOCK_ROWS = 100_000


def _csv(url: str, **kwargs: object) -> object:
    if not fs.exists(url):
        raise IngestError(f"OGB file '{url}' is missing")
    fsys, path = fs.get_fs(url)
    try:
        return pd.read_csv(fsys.open(path, "rb"), compression="gzip" if url.endswith(".gz") else None, header=None, **kwargs)
    except Exception as exc:
        raise IngestError(f"'{url}' is not a readable CSV ({type(exc).__name__}: {exc})") from exc


def _split_scheme(source: str, scheme: str | None) -> str:
    schemes = fs.listdir(fs.join(source, "split"))
    if not schemes:
        raise IngestError(f"'{source}' has no split/<scheme>/ folder")
    if scheme is None:
        return schemes[0]
    if scheme not in schemes:
        raise IngestError(f"'{source}' has no split scheme '{scheme}' (it has {', '.join(schemes)})")
    return scheme


def ingest_ogb(
    source: str,
    url: str,
    name: str,
    *,
    scheme: str | None = None,
    symmetrize: bool = True,
    overwrite: bool = False,
    allow_nan: bool = False,
) -> DatasetMeta:
    raw = fs.join(source, "raw")
    edges = _csv(fs.join(raw, "edge.csv.gz"), dtype=np.int64).to_numpy()
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise IngestError(f"'{raw}/edge.csv.gz' must hold two columns (src,dst), found {edges.shape[1]}")
    labels = _csv(fs.join(raw, "node-label.csv.gz")).to_numpy()[:, 0]
    labels = np.where(np.isnan(labels.astype(np.float64)), -1, labels).astype(np.int64)
    num_nodes = len(labels)
    count_url = fs.join(raw, "num-node-list.csv.gz")
    if fs.exists(count_url):
        num_nodes = int(_csv(count_url).to_numpy()[0, 0])
    if len(labels) != num_nodes:
        raise IngestError(f"'{raw}': {len(labels)} labels but {num_nodes} nodes")
    indptr, indices = edges_to_csc(edges[:, 0], edges[:, 1], num_nodes, symmetrize=symmetrize, where=raw)
    scheme = _split_scheme(source, scheme)
    splits = {}
    for split in layout.SPLITS:
        ids = _csv(fs.join(source, "split", scheme, f"{split}.csv.gz"), dtype=np.int64).to_numpy()[:, 0]
        splits[split] = ids

    with DatasetWriter(url, name, num_nodes=num_nodes, overwrite=overwrite, allow_nan=allow_nan, source=source) as writer:
        writer.write_graph(indptr, indices)
        feat_url = fs.join(raw, "node-feat.csv.gz")
        if not fs.exists(feat_url):
            raise IngestError(f"OGB file '{feat_url}' is missing")
        fsys, path = fs.get_fs(feat_url)
        appender = None
        with fsys.open(path, "rb") as handle:
            for block in pd.read_csv(handle, compression="gzip", header=None, chunksize=_BLOCK_ROWS, dtype=np.float32):
                feat = as_features(block.to_numpy())
                if appender is None:
                    appender = writer.appender(layout.FEAT, feat.dtype, feat.shape[1:])
                appender.append(feat)
        writer.write(layout.LABEL, labels)
        for split, ids in splits.items():
            writer.write(layout.split_key(split), ids)
        return writer.commit(symmetrized=symmetrize, split_scheme=scheme)
