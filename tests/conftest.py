"""Shared fixtures: store URLs on a local path and on memory://, small graphs, Cora, ports,
and a runner for the `strata` command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PLANETOID = SHARED_DATA / "planetoid"

os.environ.setdefault("DGLBACKEND", "pytorch")


@pytest.fixture(params=["local", "memory"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A directory URL for stores: a local path, then memory://."""
    if request.param == "local":
        yield str(tmp_path)
        return
    root = f"memory://strata-test-{uuid.uuid4().hex[:8]}"
    yield root
    memory, path = fsspec.filesystem("memory"), root.replace("memory://", "/")
    if memory.exists(path):
        memory.rm(path, recursive=True)


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


@pytest.fixture
def tiny_store(store_root: str) -> str:
    """A complete store of a random 50-node graph, on each store backend."""
    from strata.storage.ingest.common import write_graph_data

    url = f"{store_root}/tiny"
    write_graph_data(random_graph(50, 200), url, "tiny", symmetrize=True)
    return url


def require_planetoid() -> Path:
    """The shared Cora files; the calling test skips, saying why, where they are absent."""
    if not (PLANETOID / "ind.cora.x").exists():
        pytest.skip(f"Cora is not available at {PLANETOID} (the shared data folder is absent)")
    return PLANETOID


@pytest.fixture
def planetoid_dir() -> Path:
    return require_planetoid()


@pytest.fixture(scope="session")
def cora_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Cora ingested once per test session; skips, saying why, where the shared data is absent."""
    from strata.storage.ingest import ingest

    url = str(tmp_path_factory.mktemp("cora") / "cora")
    ingest("planetoid", str(require_planetoid()), url, name="cora")
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_strata(*args: str, cwd: Path | str | None = None, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `strata` command line in a subprocess and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "strata.launch.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"strata {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
