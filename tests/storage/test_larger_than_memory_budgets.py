"""Host budgets sized from what the batches actually need, not from the worst case.

The cached loader sizes its in-flight buffers from batches it samples (the worst case,
batch x prod(1 + fanout), is several times larger), and a budget that holds fewer batch
buffers than prefetch and workers ask for loads with less read-ahead instead of stopping.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from strata.errors import ConfigError
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.loader import CachedLoader, probe_batch_rows
from strata.storage.featstore.prefetch import prefetched
from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, SamplerConfig, sample_step
from strata.storage.featstore.writer import pack
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore

SAMPLER = SamplerConfig([10, 5], 128, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("budgets") / "syn")
    cfg = SyntheticGraphConfig(num_nodes=20_000, avg_degree=6, feat_dim=32, kind="rmat", train_fraction=0.05)
    write_synthetic(cfg, url, progress=False)
    return url


@pytest.fixture(scope="module")
def inputs(store: str) -> list[np.ndarray]:
    """The input node ids of every step of epoch 0."""
    s = DatasetStore.open(store)
    sampler = NeighbourSampler(*s.csc(), SAMPLER.fanouts)
    plan = EpochPlan(s.split("train"), SAMPLER.batch_size, SAMPLER.seed)
    order = plan.order(0)
    return [sample_step(sampler, plan, order, 0, step).input_nodes for step in range(plan.steps_per_epoch())]


def test_cached_loader_fits_a_budget_below_the_worst_case(store: str, inputs: list[np.ndarray]) -> None:
    s = DatasetStore.open(store)
    n, row_bytes = s.meta.num_nodes, s.meta.feat_dim * 4
    worst = SAMPLER.max_input_rows(n)
    rows = [len(ids) for ids in inputs]
    assert max(rows) * 2 < worst  # the worst case is far from what batches hold
    budget = 5 * int(max(rows) * 1.3) * row_bytes  # 5 real batches; far below 5 worst cases
    assert budget < FeaturesConfig().batches_in_flight() * worst * row_bytes and budget < n * row_bytes
    cfg = FeaturesConfig(mode="cached", host_cache_bytes=budget)
    loader = CachedLoader(s, s.csc(), SAMPLER, s.split("train"), cfg)
    probe = probe_batch_rows(loader.sampler, loader.plan, worst)
    assert max(rows[:16]) <= probe <= 1.25 * max(rows[:16]) + 1
    assert (cfg.prefetch, cfg.workers) == (2, 1)  # nothing lowered: the real batches fit
    features = s.features()
    for step, got in enumerate(prefetched(lambda st: loader.load(0, st), range(loader.steps_per_epoch()), depth=2)):
        np.testing.assert_array_equal(got.x.numpy(), features[inputs[step]])


def test_a_budget_for_fewer_buffers_lowers_read_ahead(
    store: str, inputs: list[np.ndarray], tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    row_bytes = DatasetStore.open(store).meta.feat_dim * 4
    largest = max(len(ids) for ids in inputs)
    three = 3 * largest * row_bytes
    with caplog.at_level(logging.WARNING):
        result = pack(store, SAMPLER, 1, str(tmp_path / "pack"), host_cache_bytes=three + 10 * row_bytes, progress=False)
    assert "loading with prefetch 0, workers 1" in caplog.text
    assert result.summary.max_input_rows == largest and result.summary.hot_rows == 10
    with pytest.raises(ConfigError, match=r"cannot hold the 3 batch buffers in flight \(prefetch 0, workers 1\)"):
        pack(store, SAMPLER, 1, str(tmp_path / "pack2"), host_cache_bytes=three - 1, progress=False)
