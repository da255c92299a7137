"""Ingest readers: Planetoid (safely), OGB layout, npz, DGL graphs and the synthetic generator."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.ingest import ingest
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore
from tests.helpers.cli import run_strata


def test_planetoid_cora_matches_the_published_counts(planetoid_dir: Path, store_root: str) -> None:
    meta = ingest("planetoid", str(planetoid_dir), f"{store_root}/cora", name="cora")
    store = DatasetStore.open(f"{store_root}/cora")
    assert (meta.num_nodes, meta.num_edges, meta.feat_dim, meta.num_classes) == (2708, 10556, 1433, 7)
    assert [len(store.split(s)) for s in ("train", "valid", "test")] == [140, 500, 1000]
    indptr, indices = store.csc()
    # Symmetric, no self loops: every edge has its reverse.
    dst = np.repeat(np.arange(2708), np.diff(indptr))
    edges = set(zip(indices.tolist(), dst.tolist()))
    assert all((d, s) in edges for s, d in edges) and all(s != d for s, d in edges)
    # 20 training nodes per class, as in the standard split.
    assert np.bincount(store.labels()[store.split("train")]).tolist() == [20] * 7


class _RunsCode:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_malicious_planetoid_pickle_is_refused_not_run(planetoid_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    shutil.copytree(planetoid_dir, folder)
    sentinel = tmp_path / "pwned"
    target = folder / "ind.cora.graph"
    target.chmod(0o644)
    target.write_bytes(pickle.dumps(_RunsCode(str(sentinel)), protocol=2))
    with pytest.raises(IngestError, match="refusing to unpickle 'posix.system'"):
        ingest("planetoid", str(folder), str(tmp_path / "store"))
    assert not sentinel.exists()
    assert not (tmp_path / "store").exists()


def test_npz_with_masks_round_trips(store_root: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 30
    edge_index = rng.integers(0, n, (2, 80))
    train = np.zeros(n, bool)
    train[:10] = True
    path = tmp_path / "g.npz"
    np.savez(path, edge_index=edge_index, x=rng.random((n, 4)), y=rng.integers(0, 3, n), train_mask=train, test_idx=np.arange(20, 30))
    ingest("npz", str(path), f"{store_root}/g", symmetrize=False)
    store = DatasetStore.open(f"{store_root}/g")
    assert store.split("train").tolist() == list(range(10))
    assert store.split("test").tolist() == list(range(20, 30))
    assert len(store.split("valid")) == 0
    indptr, indices = store.csc()
    expected = {(s, d) for s, d in edge_index.T.tolist() if s != d}
    got = {(int(s), v) for v in range(n) for s in indices[indptr[v] : indptr[v + 1]]}
    assert got == expected


def test_npz_missing_key_and_bad_dtype_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", edge_index=np.zeros((2, 3), int), x=np.ones((3, 2)))
    with pytest.raises(IngestError, match="has no 'label' array"):
        ingest("npz", str(tmp_path / "a.npz"), str(tmp_path / "s"))
    np.savez(tmp_path / "b.npz", edge_index=np.zeros((2, 3), int), x=np.ones((3, 2)), y=np.array([0.5, 1.0, 2.0]))
    with pytest.raises(IngestError, match="labels must be integer class ids, got dtype float64"):
        ingest("npz", str(tmp_path / "b.npz"), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def _write_csv_gz(path: Path, rows: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for row in np.atleast_2d(rows.T).T if rows.ndim == 1 else rows:
            f.write(",".join(fmt % v for v in np.atleast_1d(row)) + "\n")


def test_ogb_layout(store_root: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 25
    root = tmp_path / "ogbn_toy"
    edges = rng.integers(0, n, (60, 2))
    feat = rng.random((n, 3)).astype(np.float32)
    _write_csv_gz(root / "raw" / "edge.csv.gz", edges, "%d")
    _write_csv_gz(root / "raw" / "node-feat.csv.gz", feat, "%.6f")
    _write_csv_gz(root / "raw" / "node-label.csv.gz", rng.integers(0, 4, n), "%d")
    _write_csv_gz(root / "raw" / "num-node-list.csv.gz", np.array([n]), "%d")
    for split, ids in (("train", np.arange(0, 15)), ("valid", np.arange(15, 20)), ("test", np.arange(20, 25))):
        _write_csv_gz(root / "split" / "time" / f"{split}.csv.gz", ids, "%d")
    meta = ingest("ogb", str(root), f"{store_root}/ogb")
    store = DatasetStore.open(f"{store_root}/ogb")
    assert meta.num_nodes == n and meta.extra["split_scheme"] == "time"
    np.testing.assert_allclose(store.features(), feat, atol=1e-6)
    assert store.split("valid").tolist() == list(range(15, 20))


def test_dgl_graph_in_memory(store_root: str) -> None:
    from strata._dgl import dgl
    from strata.storage.ingest.dgl_graph import ingest_dgl_graph

    g = dgl.graph((torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0])))
    g.ndata["feat"] = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    g.ndata["label"] = torch.tensor([0, 1, 0, 1])
    g.ndata["train_mask"] = torch.tensor([True, True, False, False])
    ingest_dgl_graph(g, f"{store_root}/dgl", "dgl")
    store = DatasetStore.open(f"{store_root}/dgl")
    indptr, indices = store.csc()
    assert indices.tolist() == [3, 0, 1, 2] and indptr.tolist() == [0, 1, 2, 3, 4]
    assert store.split("train").tolist() == [0, 1]
    with pytest.raises(IngestError, match="no ndata\\['feat'\\]"):
        del g.ndata["feat"]
        ingest_dgl_graph(g, f"{store_root}/dgl2", "dgl2")


def test_synthetic_is_deterministic_and_class_correlated(store_root: str) -> None:
    cfg = SyntheticGraphConfig(num_nodes=70_000, avg_degree=6, num_classes=4, feat_dim=8, kind="rmat", seed=5)
    a = write_synthetic(cfg, f"{store_root}/a", progress=False)
    b = write_synthetic(cfg, f"{store_root}/b", progress=False)
    assert a.arrays == b.arrays  # same checksums: fully determined by the seed
    store = DatasetStore.open(f"{store_root}/a")
    indptr, indices = store.csc()
    labels = store.labels()
    dst_labels = np.repeat(labels, np.diff(indptr))
    homophily = float((labels[indices] == dst_labels).mean())
    assert 0.75 < homophily < 0.9
    out_degree = np.bincount(indices, minlength=cfg.num_nodes)
    assert out_degree.max() > 50 * out_degree.mean()  # R-MAT-like hubs
    feat = store.features()
    centroid_gap = np.linalg.norm(feat[labels == 0].mean(0) - feat[labels == 1].mean(0))
    assert centroid_gap > 0.5


def test_synthetic_config_is_validated() -> None:
    with pytest.raises(IngestError, match="synthetic.homophily must be in \\[0, 1\\]"):
        SyntheticGraphConfig(homophily=1.5)
    with pytest.raises(IngestError, match="synthetic.kind must be 'block' or 'rmat'"):
        SyntheticGraphConfig(kind="grid")


def test_cli_ingest_failure_leaves_no_store(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", edge_index=np.array([[0, 1], [1, 9]]), x=np.ones((3, 2)), y=np.zeros(3, int))
    out = tmp_path / "store"
    proc = run_strata("ingest", "npz", str(tmp_path / "bad.npz"), "--out", str(out), check=False)
    assert proc.returncode == 2
    assert "edge destination id 9 is out of range for 3 nodes" in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_cli_missing_input_is_named(tmp_path: Path) -> None:
    proc = run_strata("ingest", "planetoid", str(tmp_path / "nope"), "--out", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not fs.exists(str(tmp_path / "s"))
