"""Training on the tiered feature store: every features.mode trains on the same bytes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.config import DataConfig
from strata.runtime.gnn.batches import FeatureOptions, StoreBatches, make_batches
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.data import load_node_data
from strata.storage import fs
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.sampling import SamplerConfig
from strata.storage.featstore.writer import pack
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore
from tests.helpers.cli import run_strata


def _write(url: str) -> str:
    write_synthetic(SyntheticGraphConfig(num_nodes=4000, avg_degree=8, feat_dim=64, kind="rmat", train_fraction=0.15), url, progress=False)
    return url


@pytest.fixture
def syn_store(store_root: str) -> str:
    return _write(f"{store_root}/syn")


def _losses(store: str, model_name: str, cfg: TrainConfig, features: FeaturesConfig | None, normalize: bool) -> tuple[list[float], dict]:
    """The loss of every step of a short run: the trainer's step, over make_batches' source."""
    torch.manual_seed(cfg.seed)
    probe = build_gnn(ModelConfig(name=model_name, hidden=16), 1, 1)
    in_memory = features is None or features.mode == "in_memory"
    data = load_node_data(DataConfig(store=store, normalize_features=normalize), self_loops=probe.self_loops, load_features=in_memory)
    model = build_gnn(ModelConfig(name=model_name, hidden=16), data.feat.shape[1], data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    options = None if features is None else FeatureOptions(features, store, probe.self_loops, normalize)
    batches = make_batches(data, cfg, model.num_graph_layers, options)
    losses = []
    for epoch in range(cfg.epochs):
        for batch in batches.epoch(epoch, 0):
            model.train()
            loss = F.cross_entropy(model(batch.graphs, batch.x)[batch.seeds], batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    hits = {}
    if isinstance(batches, StoreBatches):
        hits = batches.counters.cache_hits()
        batches.close()
    return losses, hits


@pytest.mark.parametrize("backend, model_name, normalize", [("local", "sage", False), ("memory", "gcn", True)])
def test_loss_sequence_is_identical_in_every_mode(tmp_path, backend: str, model_name: str, normalize: bool) -> None:
    """Bitwise: every mode copies the same float32 rows into x (row normalisation is the same
    per-row expression), and the blocks are rebuilt from the same arrays, so each step runs
    the same kernels on the same inputs."""
    syn_store = _write(str(tmp_path / "syn") if backend == "local" else f"memory://strata-equal-{tmp_path.name}/syn")
    cfg = TrainConfig(mode="minibatch", fanouts=[4, 3], batch_size=32, epochs=2, seed=11)
    self_loops = model_name == "gcn"
    budget = 1 << 20
    packed = pack(syn_store, SamplerConfig([4, 3], 32, 11, self_loops), 2, host_cache_bytes=budget, group_size=5, progress=False)
    assert 0 < packed.summary.hot_rows < 4000 and packed.summary.packed_rows > 0
    reference, _ = _losses(syn_store, model_name, cfg, None, normalize)
    assert len(reference) == 2 * 19 and len(set(reference)) > 1
    for mode, prefetch in (("packed", 2), ("packed", 0), ("cached", 1)):
        features = FeaturesConfig(mode=mode, host_cache_bytes=budget, prefetch=prefetch, workers=2)
        losses, hits = _losses(syn_store, model_name, cfg, features, normalize)
        assert losses == reference, (mode, prefetch)
        # The runs drew on every tier: host cache, packed segments (packed mode), and the store for
        # hot rows that did not fit (prefetching leaves less room for the cache than the pack assumed).
        assert hits["host"] > 0 and (hits["packed"] > 0) == (mode == "packed"), (mode, prefetch, hits)
        assert (hits["zarr"] > 0) == (prefetch > 0), (mode, prefetch, hits)
    if backend == "memory":
        fs.remove(syn_store.rsplit("/", 1)[0])


def test_packed_mode_keeps_features_out_of_memory(syn_store: str) -> None:
    store = DatasetStore.open(syn_store)
    data = load_node_data(DataConfig(store=syn_store), self_loops=False, load_features=False)
    assert isinstance(data.feat, torch.Tensor) and tuple(data.feat.shape) == (4000, 64)
    assert torch.equal(data.feat, torch.from_numpy(store.features()))  # evaluation reads them back


def test_full_graph_mode_needs_in_memory_features(syn_store: str) -> None:
    from strata.errors import ConfigError

    data = load_node_data(DataConfig(store=syn_store), self_loops=False)
    with pytest.raises(ConfigError, match="train.mode 'full' needs features.mode 'in_memory'"):
        make_batches(data, TrainConfig(mode="full"), 2, FeatureOptions(FeaturesConfig(mode="packed"), syn_store))


@pytest.mark.slow
def test_cli_pack_then_train_packed_matches_in_memory(tmp_path) -> None:
    store = tmp_path / "syn"
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=6, feat_dim=16, train_fraction=0.3), str(store), progress=False)
    out = run_strata("pack", str(store), "--fanouts", "4,3", "--batch-size", "128", "--epochs", "2", "--seed", "5",
                     "--host-cache-bytes", "1MiB", "--group-size", "2", "-q")
    assert "hot" in out.stdout and "train with: features: {mode: packed" in out.stdout
    results = {}
    for mode in ("in_memory", "packed"):
        config = tmp_path / f"{mode}.yaml"
        config.write_text(json.dumps({
            "name": mode, "run_dir": str(tmp_path / mode), "data": {"store": str(store)},
            "model": {"name": "sage", "hidden": 16},
            # Both scored on sampled neighbourhoods (packed's default), from the same rows.
            "train": {"mode": "minibatch", "fanouts": [4, 3], "batch_size": 128, "epochs": 2, "seed": 5, "eval": "sampled"},
            "features": {"mode": mode, "host_cache_bytes": 1 << 20},
        }))
        results[mode] = json.loads(run_strata("train", str(config), "--json", "-q").stdout.strip().splitlines()[-1])
    assert results["packed"]["final_loss"] == results["in_memory"]["final_loss"]
    assert results["packed"]["test_acc"] == results["in_memory"]["test_acc"]
    # Another seed is refused, naming the difference.
    bad = run_strata("train", str(tmp_path / "packed.yaml"), "--set", "train.seed=6", "-q", check=False)
    assert bad.returncode == 2 and "no pack at" in bad.stderr


def test_cli_packs_one_share_per_rank_where_each_rank_finds_it(tmp_path, capsys) -> None:
    from strata.launch.cli import main
    from strata.runtime.gnn.executors.minibatch import balanced_share
    from strata.storage.featstore.loader import open_packed

    store = _write(str(tmp_path / "syn"))
    assert main(["pack", store, "--fanouts", "4,3", "--batch-size", "32", "--epochs", "1", "--seed", "2",
                 "--host-cache-bytes", "1MiB", "--world-size", "2", "-q"]) == 0
    assert capsys.readouterr().out.count("pack     ") == 2
    train = torch.from_numpy(DatasetStore.open(store).split("train"))
    sampler = SamplerConfig([4, 3], 32, 2)
    for rank in range(2):
        share = balanced_share(train, rank, 2, 2).numpy()
        loader = open_packed(FeaturesConfig(mode="packed", host_cache_bytes=1 << 20), store, sampler, 1, share)
        assert loader.steps_per_epoch() == -(-len(share) // 32)
        loader.close()
    assert main(["pack", store, "--fanouts", "4,3", "--batch-size", "32", "--epochs", "1", "--rank", "2", "--world-size", "2"]) == 2
    assert "--rank must be below --world-size" in capsys.readouterr().err
