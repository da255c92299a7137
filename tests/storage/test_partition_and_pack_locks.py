"""One partition writer and one packer at a time: a second is refused, naming the first, and
what the first wrote stays."""

from __future__ import annotations

import os

import pytest

from strata.launch.cli import main
from strata.partitioners.format import open_partition, partition_url
from strata.storage import fs
from strata.storage.locks import writer_lock


def test_a_partition_being_written_is_not_written_by_a_second_writer(tiny_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    with writer_lock(partition_url(tiny_store, "range-2"), "strata partition"):
        assert main(["partition", tiny_store, "--method", "range", "--parts", "2", "-q"]) == 2
        err = capsys.readouterr().err
        assert "being written by strata partition" in err and f"pid {os.getpid()}" in err
    assert main(["partition", tiny_store, "--method", "range", "--parts", "2", "-q"]) == 0
    assert open_partition(tiny_store, "range-2").num_parts == 2


def test_a_pack_being_written_is_not_written_by_a_second_packer(tiny_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["pack", tiny_store, "--fanouts", "3,2", "--batch-size", "8", "--epochs", "1", "--seed", "1", "--host-cache-bytes", "1MiB", "-q"]
    assert main(args) == 0
    packs = fs.join(tiny_store, "packs")
    [name] = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.listdir(packs) if not p.rstrip("/").rsplit("/", 1)[-1].startswith(".")]
    pack = fs.join(packs, name)
    before = sorted(fs.listdir(pack))
    capsys.readouterr()
    with writer_lock(pack, "strata pack"):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "being written by strata pack" in err and f"pid {os.getpid()}" in err
    assert sorted(fs.listdir(pack)) == before
    assert main(args) == 0  # released: the complete pack is found again
