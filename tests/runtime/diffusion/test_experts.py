"""Decentralized diffusion experts: the group layout, no traffic between expert groups on real
processes (gloo), the router's cluster accuracy on noisy digits, expert sets trained as
separate jobs, the errors for a wrong set, and `strata sample` on a model and on a set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from strata.errors import CheckpointError, ConfigError
from strata.models.diffusion.config import (
    DiffusionModelConfig,
    NoiseConfig,
    build_diffusion,
)
from strata.models.diffusion.router import ExpertMixture, Router
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig, ExpertsConfig
from strata.runtime.diffusion.experts import (
    ExpertPaths,
    expert_layout,
    read_clusters,
    subset,
    train_experts,
)
from strata.runtime.diffusion.image_data import load_image_data
from strata.runtime.diffusion.model_loading import (
    load_expert_set,
    load_router,
    read_manifest,
    write_manifest,
)
from strata.runtime.diffusion.router_training import router_accuracy
from strata.runtime.diffusion.trainer import fit
from strata.runtime.dist.comm import Comm
from strata.runtime.metrics import TrainingMetrics
from strata.storage import checkpoint
from tests.helpers.cli import run_strata
from tests.helpers.workers import run_workers

MODEL = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=10, hidden=32, depth=2, heads=2, patch_size=2)
NOISE = NoiseConfig(schedule="cosine", timesteps=100)
TRAIN = DiffusionTrainConfig(
    steps=4, batch_size=16, lr=3e-3, warmup_steps=0, ema_decay=0.9, log_every=0, seed=1, executor="experts",
    sample_per_class=1, sample_steps=2,
)
TINY_ROUTER = {"router_steps": 5, "router_batch_size": 16, "router_hidden": 16, "cluster_epochs": 2}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    from strata.storage.ingest.images import ingest_digits

    url = str(tmp_path_factory.mktemp("digits") / "digits")
    ingest_digits(url)
    return url


def train_set(digits: str, run_dir: str, experts: ExpertsConfig, model: DiffusionModelConfig = MODEL, **kw):
    return train_experts(
        DataConfig(store=digits), model, NOISE, TRAIN, experts, CheckpointConfig(), MetricsConfig(), run_dir=run_dir,
        progress=False, **kw,
    )


# -- without processes ----------------------------------------------------------------------------


def test_layout_splits_ranks_into_equal_groups_or_deals_experts_to_ranks() -> None:
    four = expert_layout(4, [0, 1])
    assert four.groups == ((0, 1), (2, 3)) and four.experts == ((0,), (1,))
    assert four.group_of(3) == 1
    two = expert_layout(2, [0, 1, 2, 3, 4])
    assert two.groups == ((0,), (1,)) and two.experts == ((0, 2, 4), (1, 3))
    only = expert_layout(3, [2])  # one expert as its own job: data parallel over all ranks
    assert only.groups == ((0, 1, 2),) and only.experts == ((2,),)
    assert expert_layout(2, []).experts == ((),)
    with pytest.raises(ConfigError, match="do not split evenly into 2"):
        expert_layout(3, [0, 1])


def test_experts_config_is_checked_and_read_from_a_job(tmp_path: Path) -> None:
    from strata.launch.job import load_job

    with pytest.raises(ConfigError, match=r"experts.expert must be -1 \(all\) or an expert index 0..3"):
        ExpertsConfig(num_experts=4, expert=4)
    with pytest.raises(ConfigError, match="train_router"):
        ExpertsConfig(train_router="maybe")
    assert ExpertsConfig(expert=-1).trains_router and not ExpertsConfig(expert=1).trains_router
    assert ExpertsConfig(train_router="only").experts_to_train == []
    raw = {"task": "diffusion", "data": {"store": "s"}, "diffusion": {"executor": "experts"}, "experts": {"num_experts": 3, "expert": 2}}
    assert load_job_from(raw, load_job, tmp_path).experts == ExpertsConfig(num_experts=3, expert=2)
    with pytest.raises(ConfigError, match="experts"):
        load_job_from({"data": {"store": "s"}, "experts": {"num_experts": 3}}, load_job, tmp_path)  # a GNN job has no experts


def load_job_from(raw: dict, load_job, folder: Path):
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_job(str(path))


def _expert(seed: int) -> torch.nn.Module:
    """A DiT whose output is not the zero of its adaLN-Zero initialisation."""
    torch.manual_seed(seed)
    model = build_diffusion(MODEL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_top1_takes_the_routers_choice_and_weighted_mixes_by_its_probabilities() -> None:
    experts = [_expert(0), _expert(1)]
    router = Router(image_shape=(1, 8, 8), num_clusters=2, hidden=8)
    with torch.no_grad():  # a router whose answer does not depend on its input: p = softmax([0, 1])
        router.head.weight.zero_()
        router.head.bias.copy_(torch.tensor([0.0, 1.0]))
    x, t, y = torch.randn(5, 1, 8, 8), torch.full((5,), 30), torch.arange(5)
    with torch.no_grad():
        outs = [e(x, t, y) for e in experts]
        top1 = ExpertMixture(experts, router, mode="top1")(x, t, y)
        weighted = ExpertMixture(experts, router, mode="weighted")(x, t, y)
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert torch.allclose(top1, outs[1]) and not torch.allclose(top1, outs[0])
    assert torch.allclose(weighted, p[0] * outs[0] + p[1] * outs[1], atol=1e-6)
    with pytest.raises(ValueError, match="3 experts but the router was trained for 2"):
        ExpertMixture([*experts, _expert(2)], router)


# -- real processes ---------------------------------------------------------------------------------


def _job_worker(topology, digits: str, run_dir: str, experts: dict) -> dict:
    result = train_set(digits, run_dir, ExpertsConfig(**experts), topology=topology)
    return dataclasses.asdict(result)


def test_experts_on_two_ranks_exchange_no_bytes_and_the_router_finds_clusters_at_small_t(digits: str, tmp_path: Path) -> None:
    """k = 4 on 2 ranks: each rank is a group of one training two experts in turn; the router
    trains data parallel over both ranks first, so the job's counters do see traffic."""
    run_dir = str(tmp_path / "run")
    cfg = {"num_experts": 4, "router_steps": 300, "router_batch_size": 128, "router_hidden": 32, "cluster_epochs": 3}
    results = run_workers(_job_worker, 2, digits, run_dir, cfg)
    result = results[0]
    assert [e["ranks"] for e in result["experts"]] == [[0], [1], [0], [1]]
    assert all(e["trained"] and e["steps"] == TRAIN.steps for e in result["experts"])
    assert result["expert_comm_bytes"] == {}  # nothing at all sent while the experts trained
    assert result["comm_bytes"].get("all_reduce", 0) > 0  # ... though the router's gradients were
    assert results[1]["expert_comm_bytes"] == {}
    assert sum(result["cluster_sizes"]) == 1797 and min(result["cluster_sizes"]) > 100
    # Far above the chance of 1/4, on noisy images with t < 50, measured in the job and again here.
    assert result["router"]["accuracy_small_t"] > 0.6
    # Told the class, the router does better over all t (at large t the class is all it has).
    assert result["router"]["accuracy_all_t_given_class"] > result["router"]["accuracy_all_t"] + 0.05
    paths = ExpertPaths.of(run_dir, CheckpointConfig())
    router, _ = load_router(paths.router_checkpoints)
    clusters, _ = read_clusters(paths.clusters)
    data = load_image_data(digits)
    accuracy = router_accuracy(router, NoiseSchedule(NOISE), data.images, torch.from_numpy(clusters), t_max=50, seed=7)
    assert accuracy > 0.6
    expert_set = load_expert_set(paths.manifest)
    assert len(expert_set.experts) == 4 and expert_set.router.num_clusters == 4


def _expert_params(topology, digits: str, run_dir: str) -> dict:
    result = train_set(digits, run_dir, ExpertsConfig(num_experts=2, train_router="no", cluster_epochs=2), topology=topology)
    return {"ranks": [e.ranks for e in result.experts], "expert_bytes": result.expert_comm_bytes}


def test_four_ranks_two_experts_reduce_within_their_group_only(digits: str, tmp_path: Path) -> None:
    """Each pair of ranks trains one expert: its traffic stays in the pair (all-reduce of
    gradients, the initial broadcast) and its weights are exactly those of training the
    expert alone in one process, which a gradient mixed across groups would change."""
    run_dir = str(tmp_path / "run")
    results = run_workers(_expert_params, 4, digits, run_dir, timeout=300)
    assert results[0]["ranks"] == [[0, 1], [2, 3]]
    assert set(results[0]["expert_bytes"]) <= {"all_reduce", "broadcast"} and results[0]["expert_bytes"]["all_reduce"] > 0
    paths = ExpertPaths.of(run_dir, CheckpointConfig())
    clusters, _ = read_clusters(paths.clusters)
    data = load_image_data(digits)
    for i in range(2):
        metrics = TrainingMetrics(MetricsConfig(), rank=0, local_rank=0, executor="test", jsonl_url=None)
        alone = str(tmp_path / f"alone-{i}")
        fit(subset(data, torch.from_numpy(clusters == i).nonzero().squeeze(1)), MODEL, NOISE, TRAIN, CheckpointConfig(),
            comm=Comm(0, 1), metrics=metrics, run_dir=alone)
        metrics.close()
        reference = checkpoint.read_shard(f"{alone}/checkpoints", TRAIN.steps, 0)["model"]
        for rank in (0, 1):
            trained = checkpoint.read_shard(paths.expert_checkpoints(i), TRAIN.steps, rank)["model"]
            for name, tensor in reference.items():
                torch.testing.assert_close(trained[name], tensor, atol=1e-5, rtol=0, msg=f"expert {i} rank {rank} {name}")


# -- sets built by separate jobs, and bad sets --------------------------------------------------------


def test_separate_jobs_build_one_set_and_a_wrong_set_is_refused(digits: str, tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    first = train_set(digits, run_dir, ExpertsConfig(num_experts=2, expert=0, train_router="yes", **TINY_ROUTER))
    assert [e.trained for e in first.experts] == [True, False] and first.router is not None
    with pytest.raises(CheckpointError, match=r"expert\(s\) 1 of 2 have no complete checkpoint"):
        load_expert_set(first.manifest)
    # A job that disagrees with the set (another model, another k) is refused before it trains.
    with pytest.raises(ConfigError, match="other settings"):
        train_set(digits, run_dir, ExpertsConfig(num_experts=2, expert=1, **TINY_ROUTER), model=dataclasses.replace(MODEL, hidden=16))
    with pytest.raises(ConfigError, match="num_experts"):
        train_set(digits, run_dir, ExpertsConfig(num_experts=3, expert=1, **TINY_ROUTER))
    second = train_set(digits, run_dir, ExpertsConfig(num_experts=2, expert=1, **TINY_ROUTER))
    assert [e.trained for e in second.experts] == [False, True] and second.router is None
    assert read_clusters(ExpertPaths.of(run_dir, CheckpointConfig()).clusters)[1]["num_clusters"] == 2
    assert len(load_expert_set(second.manifest).experts) == 2

    with pytest.raises(CheckpointError, match=r"images of shape \(1, 8, 8\) but these are \(3, 8, 8\)"):
        load_expert_set(second.manifest, image_shape=(3, 8, 8))

    # A router trained for k = 3 put into this k = 2 set.
    other = train_set(digits, str(tmp_path / "other"), ExpertsConfig(num_experts=3, train_router="only", **TINY_ROUTER))
    manifest = read_manifest(second.manifest)
    write_manifest(second.manifest, dataclasses.replace(manifest, router=other.router.checkpoint_dir))
    with pytest.raises(CheckpointError, match="has 2 experts but its router was trained for 3 clusters"):
        load_expert_set(second.manifest)
    write_manifest(second.manifest, dataclasses.replace(manifest, router_num_clusters=3))
    with pytest.raises(CheckpointError, match="has 2 experts but its router was trained for 3 clusters"):
        load_expert_set(second.manifest)
    proc = run_strata("sample", second.manifest, "--out", str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 2 and "router was trained for 3 clusters" in proc.stderr


# -- strata train and strata sample ---------------------------------------------------------------------


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _job_yaml(tmp_path: Path, digits: str, name: str, diffusion: dict, experts: dict | None = None) -> Path:
    raw = {
        "name": name, "task": "diffusion", "run_dir": str(tmp_path / name), "data": {"store": digits},
        "diffusion_model": dataclasses.asdict(MODEL), "noise": dataclasses.asdict(NOISE),
        "diffusion": {"steps": 4, "batch_size": 16, "log_every": 0, "sample_per_class": 1, "sample_steps": 2, **diffusion},
    }
    if experts is not None:
        raw["experts"] = experts
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_strata_sample_draws_from_a_model_run_and_from_an_expert_set(digits: str, tmp_path: Path) -> None:
    single = _job_yaml(tmp_path, digits, "single", {})
    run_strata("train", str(single), "-q")
    experts = _job_yaml(tmp_path, digits, "set", {"executor": "experts"}, {"num_experts": 2, **TINY_ROUTER})
    trained = json.loads(run_strata("train", str(experts), "-q", "--json").stdout)
    assert trained["num_experts"] == 2 and trained["router"]["steps"] == 5

    out = tmp_path / "model.png"
    proc = run_strata("sample", str(tmp_path / "single"), "--num-per-class", "3", "--steps", "4", "--out", str(out), "--json")
    result = json.loads(proc.stdout)
    assert result["kind"] == "model" and result["num_samples"] == 30 and result["step"] == 4
    # 10 rows of 3 digits, each 8x8 drawn 8 times larger, with 1-pixel gaps.
    assert _png_size(out) == (3 * 65 + 1, 10 * 65 + 1)

    out = tmp_path / "set.png"
    proc = run_strata("sample", str(tmp_path / "set"), "--num-per-class", "2", "--steps", "4", "--mixture", "weighted",
                      "--out", str(out), "--json")
    result = json.loads(proc.stdout)
    assert result["kind"] == "experts" and result["mixture"] == "weighted" and result["num_samples"] == 20
    assert len(result["expert_share"]) == 2 and abs(sum(result["expert_share"]) - 1) < 1e-6
    assert _png_size(out) == (2 * 65 + 1, 10 * 65 + 1)

    proc = run_strata("sample", str(tmp_path / "set" / "experts" / "manifest.json"), "--steps", "2", "--sampler", "ddim",
                      "--num-per-class", "2", "--quality", digits)
    assert "class match" in proc.stdout and "expert share" in proc.stdout
    assert (tmp_path / "set" / "experts" / "samples" / "mixture-top1-ddim.png").exists()


def test_sample_help_and_a_path_with_nothing_to_sample(tmp_path: Path) -> None:
    help_text = run_strata("sample", "--help").stdout
    for option in ("--num-per-class", "--guidance", "--steps", "--sampler", "--mixture", "--out", "--quality", "--json"):
        assert option in help_text
    proc = run_strata("sample", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a run directory with checkpoints/" in proc.stderr


def test_a_checkpoint_that_does_not_record_its_model_is_sampled_with_the_job_config(digits: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = build_diffusion(MODEL).state_dict()
    root = str(tmp_path / "bare" / "checkpoints")
    checkpoint.write_shard(root, 3, 0, {"model": weights, "ema": {"shadow": weights}})
    checkpoint.commit(root, 3, world_size=1, keep=1)
    proc = run_strata("sample", str(tmp_path / "bare"), "--steps", "2", "--num-per-class", "1", check=False)
    assert proc.returncode == 2 and "does not record which model it holds; pass the job config (--config)" in proc.stderr

    job = _job_yaml(tmp_path, digits, "bare", {})
    out = tmp_path / "bare.png"
    proc = run_strata("sample", str(tmp_path / "bare"), "--config", str(job), "--steps", "2", "--num-per-class", "1",
                      "--out", str(out), "--json")
    result = json.loads(proc.stdout)
    assert result["kind"] == "model" and result["step"] == 3 and result["num_samples"] == 10
    assert _png_size(out) == (65 + 1, 10 * 65 + 1)

    # A config for another model does not fit the weights: named, not a shape traceback.
    other = tmp_path / "other.yaml"
    raw = yaml.safe_load(job.read_text())
    raw["diffusion_model"]["hidden"] = 48
    other.write_text(yaml.safe_dump(raw))
    proc = run_strata("sample", str(tmp_path / "bare"), "--config", str(other), "--steps", "2", check=False)
    assert proc.returncode == 2 and "does not fit its model config" in proc.stderr


def _pipeline_run(topology, store: str, run_dir: str) -> None:
    metrics = TrainingMetrics(MetricsConfig(), rank=topology.rank, local_rank=topology.rank, executor="test", jsonl_url=None)
    cfg = dataclasses.replace(TRAIN, executor="pipeline", pipeline_chunks=2, lr=3e-2)
    fit(load_image_data(store), MODEL, NOISE, cfg, CheckpointConfig(),
        comm=Comm(topology.rank, topology.world_size), metrics=metrics, run_dir=run_dir)
    metrics.close()


def test_a_pipeline_checkpoint_is_sampled_with_each_layer_from_the_stage_that_trained_it(digits: str, tmp_path: Path) -> None:
    """Each stage averages only its own layers; the others stay at their initial weights in
    its shard, so a loader reading one shard would sample from a half-trained model."""
    from strata.runtime.diffusion.model_loading import load_ema_model

    run_dir = str(tmp_path / "pipe")
    run_workers(_pipeline_run, 2, digits, run_dir)
    root = f"{run_dir}/checkpoints"
    shards = [checkpoint.read_shard(root, TRAIN.steps, r)["ema"]["shadow"] for r in (0, 1)]
    loaded = dict(load_ema_model(root).model.named_parameters())
    first, last = "layers.0.", f"layers.{len(build_diffusion(MODEL).layers) - 1}."
    for prefix, owner in ((first, 0), (last, 1)):
        names = [n for n in shards[0] if n.startswith(prefix)]
        assert names
        for name in names:
            torch.testing.assert_close(loaded[name].detach(), shards[owner][name])
        assert any(not torch.equal(shards[0][n], shards[1][n]) for n in names)
