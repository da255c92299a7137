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


def _train(store: str, run_dir: Path, **kwargs):
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier

    train = TrainConfig(executor="full", epochs=kwargs.pop("epochs", 4), seed=kwargs.pop("seed", 0), lr=kwargs.pop("lr", 0.01))
    return train_node_classifier(DataConfig(store=store), ModelConfig(name="gcn", hidden=8), train,
                                 CheckpointConfig(every_steps=1, keep=2), MetricsConfig(), run_dir=str(run_dir),
                                 progress=False, **kwargs)


@pytest.fixture
def graph_store(tmp_path: Path) -> str:
    from strata.storage.ingest.common import write_graph_data
    from tests.helpers.graphs import random_graph

    write_graph_data(random_graph(60, 240), str(tmp_path / "store"), "g", symmetrize=True)
    return str(tmp_path / "store")


def test_a_fresh_run_into_another_runs_directory_is_refused_and_loses_nothing(graph_store: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _train(graph_store, run_dir, epochs=6)
    root = str(run_dir / "checkpoints")
    before = checkpoint.complete_steps(root)
    with pytest.raises(CheckpointError, match=r"holds the checkpoints of run \w+ \(started .*\), newest step 6\. To continue that run "
                       r"add --resume; to start over here add --overwrite"):
        _train(graph_store, run_dir, epochs=2, seed=1)
    assert checkpoint.complete_steps(root) == before == [5, 6]
    # Going on with the same run is fine (more epochs do not make it another run) ...
    assert _train(graph_store, run_dir, epochs=8, resume=True).steps == 8
    # ... a changed learning rate does.
    with pytest.raises(CheckpointError, match=r"configured otherwise \(train.lr: 0.01 there, 0.5 now\)"):
        _train(graph_store, run_dir, epochs=9, lr=0.5, resume=True)
    # --overwrite starts over: the old run's checkpoints are gone, the new run's are kept.
    assert _train(graph_store, run_dir, epochs=2, seed=1, overwrite=True).steps == 2
    assert checkpoint.complete_steps(root) == [1, 2]
