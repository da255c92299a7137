"""Shared fixtures: store URLs on a local path and on memory://, a tiny store, Cora.
Helpers (ports, paths, graphs, workers, the CLI runner) live in tests/helpers/."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import pytest

from tests.helpers.graphs import random_graph
from tests.helpers.paths import require_planetoid

os.environ.setdefault("DGLBACKEND", "pytorch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying why, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked cuda: torch sees no CUDA device on this machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


@pytest.fixture
def tiny_store(store_root: str) -> str:
    """A complete store of a random 50-node graph, on each store backend."""
    from strata.storage.ingest.common import write_graph_data

    url = f"{store_root}/tiny"
    write_graph_data(random_graph(50, 200), url, "tiny", symmetrize=True)
    return url


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
