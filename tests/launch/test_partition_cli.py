"""`strata partition` end to end: the report it prints and writes, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strata.launch.cli import main
from strata.partitioners.format import open_partition
from strata.storage import fs
from tests.helpers.cli import run_strata


def test_partition_cli_prints_and_stores_the_report(tiny_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition", tiny_store, "--method", "fennel", "--parts", "3", "--halo", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "fennel-3: fennel, 3 parts, halo 2 hop(s)" in out and "edge cut" in out and "replication factor" in out
    pset = open_partition(tiny_store, "fennel-3")
    report = json.loads(fs.read_text(fs.join(pset.url, "report.json")))
    assert report["halo_hops"] == 2 and report["num_nodes"] == 50 and len(report["halo"]) == 3
    assert f"{report['edge_cut']:,}" in out

    assert main(["partition", tiny_store, "--method", "fennel", "--parts", "3", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["partition", tiny_store, "--method", "range", "--parts", "2", "--name", "fennel-3", "--overwrite", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "range"
    np.testing.assert_array_equal(open_partition(tiny_store, "fennel-3").assignment(), np.arange(50) * 2 // 50)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--parts", "0"], "num_parts must be at least 1, got 0"),
        (["--parts", "51"], "into 51 parts: the number of parts must be between 1 and the number of nodes"),
        (["--halo", "0"], "halo_hops must be at least 1"),
    ],
)
def test_partition_cli_bad_input(tiny_store: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["partition", tiny_store, "--method", "fennel", "-q", *args]) == 2
    assert message in capsys.readouterr().err


def test_partition_cli_runs_as_a_command(tmp_path) -> None:
    from strata.storage.ingest.common import write_graph_data
    from tests.helpers.graphs import random_graph

    url = str(tmp_path / "g")
    write_graph_data(random_graph(80, 300), url, "g", symmetrize=True)
    proc = run_strata("partition", url, "--method", "metis", "--parts", "2", "--halo", "1")
    assert proc.stdout.startswith("partition   metis-2: metis, 2 parts, halo 1 hop(s)")
    assert "Metis partitioning" not in proc.stdout + proc.stderr
    proc = run_strata("partition", url, "--method", "louvain", check=False)
    assert proc.returncode == 2 and "invalid choice: 'louvain'" in proc.stderr
    assert "halo" in run_strata("partition", "--help").stdout
