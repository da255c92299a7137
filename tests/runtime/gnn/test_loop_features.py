"""What node classification gains from the one loop: gradient accumulation over sampled
micro-batches, bf16 autocast (Cora GCN within a point of fp32), and resuming a checkpoint that
the GNN trainer wrote before the one loop."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.executors.base import BuildContext
from strata.runtime.gnn.registry import build_executor
from strata.runtime.gnn.trainer import train_node_classifier
from strata.runtime.loop import train_step
from strata.storage import checkpoint, fs
from strata.storage.ingest.common import write_graph_data
from tests.helpers.graphs import random_graph, random_node_data

FEAT, CLASSES = 12, 3


def _minibatch_executor(batch_size: int, grad_accum: int):
    data = random_node_data(300, 1500, feat_dim=FEAT, num_classes=CLASSES, seed=4, symmetrize=True, self_loops=False)
    torch.manual_seed(0)
    model = build_gnn(ModelConfig(name="sage", hidden=16, num_layers=2, dropout=0.0), FEAT, CLASSES)
    # Every neighbour (-1) makes sampling exact, so micro-batches see the blocks the whole batch sees.
    train = TrainConfig(executor="minibatch", batch_size=batch_size, grad_accum=grad_accum, fanouts=[-1, -1], seed=3)
    ctx = BuildContext(
        train=train, pipeline=None, features=None, data_cfg=DataConfig(store="unused"), model=model,  # type: ignore[arg-type]
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0), comm=Comm(0, 1), device="cpu", load_data=lambda: data,
    )
    return build_executor(ctx)


def test_four_micro_batches_give_the_gradient_of_the_whole_batch() -> None:
    whole = _minibatch_executor(batch_size=64, grad_accum=1)
    accum = _minibatch_executor(batch_size=64, grad_accum=4)
    assert (whole.steps_per_epoch(), accum.steps_per_epoch()) == (3, 10)  # 150 training nodes: batches of 64, or of 16
    (batch,) = [next(iter(whole.epoch(0, 0)))]
    micro = [b for _, b in zip(range(4), accum.epoch(0, 0))]
    assert [len(b) for b in micro] == [16] * 4
    out_whole = train_step(whole, [batch], comm=Comm(0, 1))
    out_accum = train_step(accum, micro, comm=Comm(0, 1))
    assert out_accum.samples == out_whole.samples == 64
    assert out_accum.loss == pytest.approx(out_whole.loss, rel=1e-5)
    for a, b in zip(whole.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_grad_accum_trains_end_to_end_with_fewer_optimizer_steps(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_graph_data(random_graph(300, 1500, feat_dim=FEAT, num_classes=CLASSES, seed=4), store, "g", symmetrize=True)
    model = ModelConfig(name="sage", hidden=16, num_layers=2, dropout=0.0)
    cfg = TrainConfig(executor="minibatch", epochs=2, batch_size=64, grad_accum=4, fanouts=[5, 5], seed=3)
    result = train_node_classifier(DataConfig(store=store), model, cfg, CheckpointConfig(), MetricsConfig(),
                                   run_dir=str(tmp_path / "run"), progress=False)
    # 150 training nodes in micro-batches of 16: 10 per epoch, 4 to a step, so 3 steps per epoch.
    assert (result.steps, result.epochs) == (6, 2)


def _cora_gcn(store: str, precision: str, run_dir: Path) -> float:
    model = ModelConfig(name="gcn", hidden=16, num_layers=2, dropout=0.5)
    cfg = TrainConfig(executor="full", epochs=200, lr=0.01, weight_decay=5e-4, seed=0, precision=precision)
    data = DataConfig(store=store, normalize_features=True)
    return train_node_classifier(data, model, cfg, CheckpointConfig(), MetricsConfig(), run_dir=str(run_dir), progress=False).test_acc


@pytest.mark.slow
def test_bf16_autocast_trains_cora_gcn_within_a_point_of_fp32(cora_store: str, tmp_path: Path) -> None:
    fp32 = _cora_gcn(cora_store, "fp32", tmp_path / "fp32")
    bf16 = _cora_gcn(cora_store, "bf16", tmp_path / "bf16")
    assert fp32 > 0.78, fp32
    assert abs(bf16 - fp32) <= 0.01, (bf16, fp32)


def _as_written_before_the_one_loop(root: str, step: int) -> None:
    """Rewrite a checkpoint's shard into the GNN trainer's old layout: the early-stopping
    bookkeeping inside the loop state, no 'job' entry."""
    url = fs.join(checkpoint.step_dir(root, step), checkpoint.shard_name(0))
    shard = checkpoint.read_shard(root, step, 0)
    loop, best = shard["loop"], shard.pop("job")
    shard["loop"] = {
        "epoch": loop["epoch"], "step_in_epoch": loop["step_in_epoch"], "global_step": loop["step"],
        "best_val_acc": best["val_acc"], "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
        "bad_epochs": best["bad_epochs"], "last_loss": loop["last_loss"],
    }
    buffer = io.BytesIO()
    torch.save(shard, buffer)
    fs.write_bytes(url, buffer.getvalue())


def test_a_checkpoint_of_the_old_gnn_trainer_resumes_to_the_same_weights(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_graph_data(random_graph(200, 1000, feat_dim=FEAT, num_classes=CLASSES, seed=5), store, "g", symmetrize=True)
    model = ModelConfig(name="gcn", hidden=8, num_layers=2, dropout=0.5)
    cfg = TrainConfig(executor="full", epochs=6, seed=2)
    data = DataConfig(store=store)

    def run(name: str, **kwargs) -> None:
        train_node_classifier(data, model, kwargs.pop("cfg", cfg), CheckpointConfig(every_steps=1, keep=0), MetricsConfig(),
                              run_dir=str(tmp_path / name), progress=False, **kwargs)

    run("straight")
    run("resumed", cfg=dataclasses.replace(cfg, max_steps=4))
    _as_written_before_the_one_loop(str(tmp_path / "resumed/checkpoints"), 4)
    assert checkpoint.latest_step(str(tmp_path / "resumed/checkpoints")) == 4
    run("resumed", resume=True)
    a = checkpoint.read_shard(str(tmp_path / "straight/checkpoints"), 6, 0)
    b = checkpoint.read_shard(str(tmp_path / "resumed/checkpoints"), 6, 0)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["job"] == b["job"]


def test_a_store_without_training_nodes_is_a_config_error(tmp_path: Path) -> None:
    from strata.errors import ConfigError

    graph = random_graph(50, 200, feat_dim=FEAT, num_classes=CLASSES)
    graph.splits["train"] = graph.splits["train"][:0]
    write_graph_data(graph, str(tmp_path / "store"), "g", symmetrize=True)
    with pytest.raises(ConfigError, match="has no training nodes"):
        train_node_classifier(DataConfig(store=str(tmp_path / "store")), ModelConfig(), TrainConfig(epochs=1), CheckpointConfig(),
                              MetricsConfig(), run_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
