"""`strata info` as a user runs it: a store's partitions and packs, the exit status its help
promises for a failed --verify, and what a folder that is not a store is."""

from __future__ import annotations

import shutil
from pathlib import Path

from strata.storage import fs, layout
from tests.helpers.cli import run_strata
from tests.helpers.graphs import random_graph


def _store(tmp_path: Path, name: str = "store") -> str:
    from strata.storage.ingest.common import write_graph_data

    url = str(tmp_path / name)
    write_graph_data(random_graph(60, 240), url, name, symmetrize=True)
    return url


def test_info_lists_partitions_and_packs(tmp_path: Path) -> None:
    url = _store(tmp_path)
    out = run_strata("info", url).stdout
    assert "partitions none (write one with 'strata partition')" in out
    assert "packs    none under STORE/packs (write one with 'strata pack')" in out

    run_strata("partition", url, "--method", "range", "--parts", "2", "--halo", "1", "-q")
    run_strata("pack", url, "--fanouts", "3,3", "--batch-size", "10", "--epochs", "2", "-q")
    out = run_strata("info", url).stdout
    assert "partitions:\n  range-2              range, 2 parts, halo 1 hop(s)\n" in out
    (pack,) = fs.listdir(fs.join(url, "packs"))
    assert f"packs:\n  {pack:<20} 2 epoch(s) x 3 steps; fanouts 3,3, batch_size 10, seed 0; complete\n" in out


def test_verify_exits_1_as_its_help_says(tmp_path: Path) -> None:
    import zarr

    assert "exit 1 when one does not match" in " ".join(run_strata("info", "--help").stdout.split())
    url = _store(tmp_path)
    assert "verify   ok" in run_strata("info", url, "--verify").stdout
    group = zarr.open_group(fs.zarr_store(url, "w"), mode="r+")
    group[layout.LABEL][3] = 1 if int(group[layout.LABEL][3]) == 0 else 0  # another class: in range, so only the checksum tells
    proc = run_strata("info", url, "--verify", check=False)
    assert proc.returncode == 1
    assert "VERIFY FAILED: 'node/label' checksum mismatch" in proc.stdout
    assert proc.stderr == f"strata: error: store '{url}' failed verification (1 problem(s)); re-ingest it\n"
    assert run_strata("info", str(tmp_path / "nowhere"), check=False).returncode == 2  # other errors: 2


def test_info_on_what_is_not_a_store_says_so(tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    _store(stores, "cora")
    proc = run_strata("info", str(stores), check=False)
    assert proc.returncode == 2 and "not fully written" not in proc.stderr
    assert f"'{stores}' is not a dataset store (no _STRATA_COMPLETE marker and no zarr data)" in proc.stderr
    assert f"it holds the store(s) cora: run 'strata info {stores}/cora'" in proc.stderr

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    proc = run_strata("info", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "it looks like a run directory of 'strata train'" in proc.stderr

    (tmp_path / "job.yaml").write_text("name: x\n")
    proc = run_strata("info", str(tmp_path / "job.yaml"), check=False)
    assert proc.returncode == 2 and "is a file, not a dataset store" in proc.stderr

    # A store whose marker is gone, with its zarr data still there, is one that was not fully written.
    broken = tmp_path / "broken"
    shutil.copytree(stores / "cora", broken)
    (broken / layout.MARKER).unlink()
    proc = run_strata("info", str(broken), check=False)
    assert proc.returncode == 2 and "not fully written" in proc.stderr
