"""Graphs given as numpy arrays: one ``.npz`` file, or a folder of ``.npy`` files.

Keys (the first name found is used):

- ``edge_index``: (2, E) or (E, 2) integer array of source, destination pairs
- ``features`` | ``feat`` | ``x``: (N, F) numeric
- ``labels`` | ``label`` | ``y``: (N,) integer class ids
- ``train`` | ``train_idx`` | ``train_mask`` (and ``valid``/``val``, ``test`` likewise):
  node ids, or boolean masks of length N
- ``num_nodes`` (optional): a scalar; otherwise the feature rows
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.ingest.common import GraphData

_ALIASES = {
    "edge_index": ("edge_index", "edges"),
    "feat": ("features", "feat", "x"),
    "label": ("labels", "label", "y"),
    "train": ("train", "train_idx", "train_mask"),
    "valid": ("valid", "valid_idx", "val", "val_idx", "valid_mask", "val_mask"),
    "test": ("test", "test_idx", "test_mask"),
    "num_nodes": ("num_nodes",),
}


def _load_arrays(source: str) -> dict[str, np.ndarray]:
    if not fs.exists(source):
        raise IngestError(f"'{source}' does not exist: expected an .npz file or a folder of .npy files")
    try:
        if fs.isdir(source):
            return {
                name[:-4]: np.load(io.BytesIO(fs.read_bytes(fs.join(source, name))), allow_pickle=False)
                for name in fs.listdir(source)
                if name.endswith(".npy")
            }
        with np.load(io.BytesIO(fs.read_bytes(source)), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise IngestError(f"'{source}': cannot read arrays ({exc}); object arrays are not accepted") from exc
    except Exception as exc:
        raise IngestError(f"'{source}' is not a readable .npz/.npy file ({type(exc).__name__}: {exc})") from exc


def _pick(arrays: dict[str, np.ndarray], key: str, source: str, required: bool = True) -> Any:
    for alias in _ALIASES[key]:
        if alias in arrays:
            return alias, arrays[alias]
    if required:
        found = ", ".join(sorted(arrays)) or "none"
        raise IngestError(f"'{source}' has no '{key}' array (looked for {', '.join(_ALIASES[key])}; found {found})")
    return None, None


def read_arrays(source: str) -> GraphData:
    arrays = _load_arrays(source)
    _, edges = _pick(arrays, "edge_index", source)
    _, feat = _pick(arrays, "feat", source)
    _, label = _pick(arrays, "label", source)
    edges = np.asarray(edges)
    if edges.ndim != 2 or 2 not in edges.shape:
        raise IngestError(f"'{source}': edge_index must have shape (2, E) or (E, 2), got {edges.shape}")
    if edges.shape[0] != 2:
        edges = edges.T
    _, num_nodes = _pick(arrays, "num_nodes", source, required=False)
    n = int(num_nodes) if num_nodes is not None else int(np.asarray(feat).shape[0])
    splits = {}
    for split in ("train", "valid", "test"):
        alias, values = _pick(arrays, split, source, required=False)
        if values is None:
            continue
        values = np.asarray(values)
        if values.dtype == bool:
            if values.shape != (n,):
                raise IngestError(f"'{source}': mask '{alias}' has shape {values.shape}, expected ({n},)")
            values = np.flatnonzero(values)
        if values.dtype.kind not in "iu":
            raise IngestError(f"'{source}': split '{alias}' must hold integer node ids or a boolean mask, got {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= n):
            raise IngestError(f"'{source}': split '{alias}' holds node id {int(values.max())}, out of range for {n} nodes")
        splits[split] = values.astype(np.int64)
    label = np.asarray(label)
    if label.dtype.kind not in "iu":
        raise IngestError(f"'{source}': labels must be integer class ids, got dtype {label.dtype}")
    return GraphData(num_nodes=n, src=edges[0], dst=edges[1], feat=feat, label=label.reshape(-1), splits=splits)
