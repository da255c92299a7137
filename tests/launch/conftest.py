"""Fixtures of the command-line tests: a small graph store on a local path, and a job config for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.graphs import random_graph

GNN_JOB = """\
name: {name}
data: {{store: {store}}}
model: {{name: gcn, hidden: 8, num_layers: 2}}
train: {{executor: full, epochs: {epochs}, lr: 0.01}}
"""


@pytest.fixture(scope="session")
def graph_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete store of a random 60-node graph (8 features, 3 classes) on a local path."""
    from strata.storage.ingest.common import write_graph_data

    url = str(tmp_path_factory.mktemp("graph") / "store")
    write_graph_data(random_graph(60, 240), url, "graph", symmetrize=True)
    return url


def gnn_job(folder: Path, store: str, name: str = "gnn", epochs: int = 2) -> Path:
    """A GCN job config for ``store`` at ``folder/<name>.yaml``; its run directory is runs/<name>."""
    path = folder / f"{name}.yaml"
    path.write_text(GNN_JOB.format(name=name, store=store, epochs=epochs))
    return path
