"""Sampled evaluation: what it scores, that grouping, ranks and repeats do not change it, and
that a minibatch run on store-served features evaluates without the feature matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata.errors import ConfigError
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.dist.comm import Comm
from strata.runtime.gnn import evaluation
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.executors.blocks import graph_arrays, graph_block
from strata.runtime.gnn.executors.minibatch import evaluate_full_graph
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.sampling import NeighbourSampler
from tests.helpers.graphs import random_node_data
from tests.helpers.workers import run_workers

FEAT, CLASSES = 6, 3


def _setup(fanouts: list[int]):
    data = random_node_data(300, 1500, feat_dim=FEAT, num_classes=CLASSES, seed=3, symmetrize=True, self_loops=False)
    torch.manual_seed(0)
    model = build_gnn(ModelConfig(name="sage", hidden=8, num_layers=2, dropout=0.5), FEAT, CLASSES)
    sampler = NeighbourSampler(*graph_arrays(graph_block(data.graph)), fanouts)
    reads = []
    feat = data.feat.numpy()

    def rows(ids: np.ndarray) -> np.ndarray:
        reads.append(len(ids))
        return np.take(feat, ids, axis=0)

    return data, model, sampler, rows, reads


def _evaluation(data, model, sampler, rows, *, table_rows: int, comm: Comm | None = None, max_nodes: int = 0):
    return evaluation.SampledEvaluation(model, data, sampler, rows, batch_size=16, seed=4, max_nodes=max_nodes,
                                        row_bytes=FEAT * 4, table_bytes=table_rows * FEAT * 4, comm=comm or Comm(0, 1))


def test_with_every_neighbour_it_scores_what_the_whole_graph_scores() -> None:
    data, model, sampler, rows, _ = _setup([-1, -1])
    full = evaluate_full_graph(model, data)
    scores = _evaluation(data, model, sampler, rows, table_rows=10**6)()
    assert scores.keys() == full.keys()
    for key, value in full.items():
        assert scores[key] == pytest.approx(value, rel=1e-5), key
    assert not model.training  # scored in eval mode (dropout off), like the full-graph evaluation


def test_groups_of_rows_and_repeats_give_the_same_scores() -> None:
    data, model, sampler, rows, reads = _setup([3, 2])
    whole = _evaluation(data, model, sampler, rows, table_rows=10**6)
    first = whole()
    assert len(reads) == 1 and whole() == first and len(reads) == 1  # one group: rows read once, then kept
    reads.clear()
    grouped = _evaluation(data, model, sampler, rows, table_rows=100)  # about one batch's inputs a group
    assert grouped() == pytest.approx(first, rel=1e-6)
    assert len(reads) > 5 and max(reads) <= 100 + 16 * 3 * 4  # a group may overshoot by its last batch
    assert grouped() == pytest.approx(first, rel=1e-6) and len(reads) > 10  # several groups: read again


def test_a_capped_split_is_a_fixed_seeded_sample() -> None:
    ids = np.arange(1000, 2000)
    a = evaluation.eval_nodes(ids, 100, seed=1, split=2)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and set(a) <= set(ids)
    assert np.array_equal(a, evaluation.eval_nodes(ids, 100, seed=1, split=2))
    assert not np.array_equal(a, evaluation.eval_nodes(ids, 100, seed=2, split=2))
    assert np.array_equal(evaluation.eval_nodes(ids[::-1], 0, seed=1, split=2), ids)
    data, model, sampler, rows, _ = _setup([3, 2])
    scored = _evaluation(data, model, sampler, rows, table_rows=10**6, max_nodes=20)
    assert {name: len(ids) for name, ids in scored.nodes.items()} == {
        name: min(20, len(ids)) for name, ids in data.splits.items() if len(ids)}


def test_auto_samples_minibatch_runs_whose_features_come_from_the_store() -> None:
    minibatch = TrainConfig(executor="minibatch")
    assert evaluation.sampled(minibatch, FeaturesConfig(mode="packed"))
    assert evaluation.sampled(minibatch, FeaturesConfig(mode="cached"))
    assert not evaluation.sampled(minibatch, FeaturesConfig(mode="in_memory"))
    assert not evaluation.sampled(minibatch, None)
    assert not evaluation.sampled(TrainConfig(), None)  # full-graph training: full-graph evaluation, as before
    assert not evaluation.sampled(TrainConfig(executor="minibatch", eval="full"), FeaturesConfig(mode="packed"))
    assert evaluation.sampled(TrainConfig(executor="minibatch", eval="sampled"), None)
    with pytest.raises(ConfigError, match="train.eval=sampled .* needs train.executor=minibatch"):
        TrainConfig(executor="full", eval="sampled")
    with pytest.raises(ConfigError, match="train.eval must be"):
        TrainConfig(eval="some")
    with pytest.raises(ConfigError, match="train.eval_nodes"):
        TrainConfig(eval_nodes=-1)


def _ranked_scores(topology) -> dict:
    data, model, sampler, rows, _ = _setup([3, 2])
    return _evaluation(data, model, sampler, rows, table_rows=10**6, comm=Comm(topology.rank, topology.world_size))()


def test_ranks_share_the_batches_and_agree_with_one_process() -> None:
    data, model, sampler, rows, _ = _setup([3, 2])
    alone = _evaluation(data, model, sampler, rows, table_rows=10**6)()
    for scores in run_workers(_ranked_scores, 2):
        assert scores == pytest.approx(alone, rel=1e-6)


def test_a_minibatch_run_on_cached_features_evaluates_without_the_feature_matrix(tmp_path, monkeypatch) -> None:
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn import data as data_module
    from strata.runtime.gnn.trainer import train_node_classifier
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    store = str(tmp_path / "syn")
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=6, feat_dim=64, train_fraction=0.3), store, progress=False)

    def train(eval_mode: str):
        return train_node_classifier(
            DataConfig(store=store), ModelConfig(name="sage", hidden=32, dropout=0.0),
            TrainConfig(executor="minibatch", fanouts=[4, 3], batch_size=128, epochs=4, weight_decay=0.0, eval=eval_mode, eval_nodes=400),
            CheckpointConfig(), MetricsConfig(), run_dir=str(tmp_path / eval_mode), progress=False,
            features=FeaturesConfig(mode="cached", host_cache_bytes=4 << 20),
        )

    def no_spill(*args, **kwargs):
        raise AssertionError("the features were spilled: the sampled evaluation needs no feature matrix")

    with monkeypatch.context() as patch:
        patch.setattr(data_module, "spilled_features", no_spill)
        sampled = train("auto")
    full = train("full")
    assert sampled.final_loss == full.final_loss  # the evaluation does not change what is trained
    # 8 classes (majority ~1/8): it learnt, and 400 sampled nodes a split score it close to the full graph.
    assert sampled.test_acc > 0.6 and abs(sampled.test_acc - full.test_acc) < 0.1, (sampled, full)
