"""Planetoid citation graphs (Cora, CiteSeer, PubMed) in their original ``ind.<name>.*`` files.

The files are Python-2 pickles. Pickles can run code, so they are read with an unpickler that
admits only the handful of numpy, scipy and collections classes the format uses.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import numpy as np
import scipy.sparse as sp

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.ingest.common import GraphData

_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy.core import multiarray  # noqa: F401  (resolves through numpy's alias in numpy 2)

    return {
        ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("scipy.sparse.csr", "csr_matrix"): sp.csr_matrix,
        ("scipy.sparse._csr", "csr_matrix"): sp.csr_matrix,
        ("collections", "defaultdict"): collections.defaultdict,
        ("__builtin__", "list"): list,
        ("builtins", "list"): list,
    }


class SafeUnpickler(pickle.Unpickler):
    """Admits only the classes of the Planetoid format; anything else is refused, never run."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._where = where
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise IngestError(
                f"{self._where}: refusing to unpickle '{module}.{name}': Planetoid files hold only "
                "numpy arrays, scipy CSR matrices and dicts of lists; this file is not a Planetoid file "
                "and may be malicious"
            ) from None


def _load(folder: str, name: str, part: str) -> Any:
    url = fs.join(folder, f"ind.{name}.{part}")
    if not fs.exists(url):
        raise IngestError(f"Planetoid file '{url}' is missing (a Planetoid folder holds ind.{name}.{{{','.join(_PARTS)}}})")
    try:
        return SafeUnpickler(fs.read_bytes(url), url).load()
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(f"'{url}' is not a readable Planetoid pickle ({type(exc).__name__}: {exc})") from exc


def planetoid_prefix(folder: str, wanted: str = "") -> str:
    """The ``<name>`` of the ``ind.<name>.*`` files in ``folder``: ``wanted`` if given, else the only one."""
    names = sorted({n.split(".")[1] for n in fs.listdir(folder) if n.startswith("ind.") and n.count(".") >= 2})
    if wanted:
        if wanted.lower() not in names:
            raise IngestError(f"'{folder}' has no ind.{wanted.lower()}.* files (it has: {', '.join(names) or 'none'})")
        return wanted.lower()
    if len(names) != 1:
        raise IngestError(
            f"'{folder}' holds {'no' if not names else 'several'} Planetoid data sets ({', '.join(names) or 'none'}); "
            "name one with --planetoid-name"
        )
    return names[0]


def read_planetoid(folder: str, name: str = "cora") -> GraphData:
    """The standard semi-supervised split: the first 20 per class train, 500 validate, 1,000 test."""
    x, y, tx, ty, allx, ally, graph = (_load(folder, name, part) for part in _PARTS)
    index_url = fs.join(folder, f"ind.{name}.test.index")
    if not fs.exists(index_url):
        raise IngestError(f"Planetoid file '{index_url}' is missing")
    try:
        test_index = np.array([int(line) for line in fs.read_text(index_url).split()], dtype=np.int64)
    except ValueError as exc:
        raise IngestError(f"'{index_url}' must hold one integer node id per line ({exc})") from exc
    test_range = np.sort(test_index)

    if name.lower() == "citeseer":
        # CiteSeer has isolated test nodes missing from tx/ty: pad them with zero rows.
        full = np.arange(test_range.min(), test_range.max() + 1)
        tx_ext = sp.lil_matrix((len(full), tx.shape[1]))
        tx_ext[test_range - test_range.min(), :] = tx
        ty_ext = np.zeros((len(full), ty.shape[1]))
        ty_ext[test_range - test_range.min(), :] = ty
        tx, ty = tx_ext, ty_ext

    feat = sp.vstack([sp.csr_matrix(allx), sp.csr_matrix(tx)]).tolil()
    feat[test_index, :] = feat[test_range, :]
    labels = np.vstack([np.asarray(ally), np.asarray(ty)])
    labels[test_index, :] = labels[test_range, :]
    num_nodes = feat.shape[0]

    src, dst = [], []
    for node, neighbours in graph.items():
        for other in neighbours:
            src.append(other)
            dst.append(node)
    label = np.where(labels.sum(1) > 0, labels.argmax(1), -1).astype(np.int64)
    num_train = np.asarray(y).shape[0]
    splits = {
        "train": np.arange(num_train, dtype=np.int64),
        "valid": np.arange(num_train, num_train + 500, dtype=np.int64),
        "test": test_range.astype(np.int64),
    }
    src_arr, dst_arr = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    # The graph dict may name a few ids past the feature rows (CiteSeer); they are isolated nodes.
    num_nodes = max(num_nodes, int(src_arr.max()) + 1, int(dst_arr.max()) + 1)
    if num_nodes > feat.shape[0]:
        pad = num_nodes - feat.shape[0]
        feat = sp.vstack([feat.tocsr(), sp.csr_matrix((pad, feat.shape[1]))])
        label = np.concatenate([label, -np.ones(pad, dtype=np.int64)])
    return GraphData(
        num_nodes=num_nodes,
        src=src_arr,
        dst=dst_arr,
        feat=np.asarray(feat.todense(), dtype=np.float32),
        label=label,
        splits=splits,
    )
