"""Checkpoints are verified as they are read: a shard whose bytes changed since the commit is
refused by name, and resume falls back to the previous complete checkpoint, on every rank
together, even when only one rank's shard is damaged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from strata.errors import CheckpointError
from strata.runtime import checkpointing
from strata.runtime.dist.comm import Comm
from strata.storage import checkpoint
from tests.helpers.workers import run_workers


def _flip_a_byte(root: Path, step: int, rank: int, offset: int = -20) -> None:
    shard = root / f"step-{step:08d}" / checkpoint.shard_name(rank)
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))


def _write(root: Path, steps: list[int], comm: Comm) -> None:
    for step in steps:
        checkpointing.save(str(root), step, {"step": torch.tensor(step), "rank": torch.tensor(comm.rank)}, keep=0, comm=comm)


def test_the_marker_records_a_checksum_per_shard_and_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, [1], Comm(0, 1))
    marker = json.loads((tmp_path / "step-00000001" / "COMPLETE").read_text())
    assert list(marker["checksums"]) == ["shard-00000.pt"]
    assert not list((tmp_path / "step-00000001").glob("*.blake2b"))
    assert checkpoint.read_shard(str(tmp_path), 1, 0)["step"].item() == 1
    _flip_a_byte(tmp_path, 1, 0)
    with pytest.raises(CheckpointError, match=r"shard-00000.pt' is corrupt: its bytes changed since the checkpoint was committed"):
        checkpoint.read_shard(str(tmp_path), 1, 0)


def test_resume_skips_a_corrupt_newest_checkpoint_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    comm = Comm(0, 1)
    _write(tmp_path, [1, 2, 3], comm)
    _flip_a_byte(tmp_path, 3, 0)
    with caplog.at_level(logging.WARNING):
        step, shard = checkpointing.restore(str(tmp_path), comm)
    assert step == 2 and shard["step"].item() == 2
    assert "step-00000003" in caplog.text and "trying the previous complete checkpoint" in caplog.text


def test_when_no_complete_checkpoint_is_usable_resume_says_so(tmp_path: Path) -> None:
    comm = Comm(0, 1)
    _write(tmp_path, [1, 2], comm)
    _flip_a_byte(tmp_path, 1, 0)
    (tmp_path / "step-00000002" / checkpoint.shard_name(0)).unlink()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint under .*step 2, step 1 are complete but corrupt"):
        checkpointing.restore(str(tmp_path), comm)


def test_a_checkpoint_written_before_checksums_is_read_unchecked(tmp_path: Path) -> None:
    _write(tmp_path, [1], Comm(0, 1))
    marker_url = tmp_path / "step-00000001" / "COMPLETE"
    marker = json.loads(marker_url.read_text())
    del marker["checksums"]
    marker_url.write_text(json.dumps(marker))
    assert checkpoint.read_shard(str(tmp_path), 1, 0)["step"].item() == 1


def _restore_worker(topology, root: str) -> int:
    comm = Comm(topology.rank, topology.world_size)
    found = checkpointing.restore(root, comm)
    assert found is not None
    step, shard = found
    assert shard["rank"].item() == topology.rank
    return step


def _save_worker(topology, root: str) -> None:
    _write(Path(root), [1, 2], Comm(topology.rank, topology.world_size))


def test_every_rank_falls_back_together_when_one_rank_shard_is_damaged(tmp_path: Path) -> None:
    run_workers(_save_worker, 2, str(tmp_path))
    _flip_a_byte(tmp_path, 2, 1)
    assert run_workers(_restore_worker, 2, str(tmp_path)) == [1, 1]
