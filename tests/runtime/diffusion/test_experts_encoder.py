"""Expert sets clustered on a contrastive encoder's features (issue 19): balanced k-means, the
encoder clustering deterministic for a seed and balanced, a set built by separate jobs equal to
one built in one job, a set whose encoder does not match refused, top-2 routing and guidance
routed per expert, and the router's accuracy per noise level."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from strata.errors import ConfigError, StrataError
from strata.models.diffusion.router import Router
from strata.models.diffusion.sampling import guided_prediction
from strata.runtime.config import CheckpointConfig
from strata.runtime.diffusion.balanced_kmeans import balanced_kmeans
from strata.runtime.diffusion.cluster_encoder import EncoderConfig, encoder_bytes, train_encoder
from strata.runtime.diffusion.config import ExpertsConfig
from strata.runtime.diffusion.expert_clusters import cluster_labels
from strata.runtime.diffusion.expert_mixture import RoutedMixture
from strata.runtime.diffusion.experts import ExpertPaths, read_clusters
from strata.runtime.diffusion.image_data import load_image_data
from strata.runtime.diffusion.model_loading import load_expert_set, load_router, read_manifest
from strata.storage import checkpoint
from tests.runtime.diffusion.test_experts import TINY_ROUTER, _expert, train_set

ENCODER = {"cluster_features": "encoder", "encoder_steps": 10, "encoder_dim": 16}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    from strata.storage.ingest.images import ingest_digits

    url = str(tmp_path_factory.mktemp("digits") / "digits")
    ingest_digits(url)
    return url


@pytest.fixture(scope="module")
def encoder_set(digits: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The run directory of a k = 2 set clustered on the encoder, built by one job."""
    run_dir = str(tmp_path_factory.mktemp("one") / "run")
    train_set(digits, run_dir, ExpertsConfig(num_experts=2, **TINY_ROUTER, **ENCODER))
    return run_dir


def _sizes_within(sizes: list[int], share: float) -> bool:
    return max(sizes) <= (1 + share) * min(sizes)


def test_balanced_kmeans_gives_equal_clusters_of_unequal_blobs_the_same_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, (500, 150, 50))])  # blobs of 500, 150, 50
    first, again = balanced_kmeans(x, 3, seed=4), balanced_kmeans(x, 3, seed=4)
    assert sum(first.sizes) == 700 and max(first.sizes) == 234 and min(first.sizes) >= 232  # ceil(700 / 3) at most
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.centroids, again.centroids)
    # The smallest blob lies whole in one cluster: balance moves rows at the margins, not across the map.
    assert np.bincount(first.labels[650:], minlength=3).max() == 50
    with pytest.raises(ConfigError, match="1 <= k <= rows"):
        balanced_kmeans(x[:2], 3, seed=0)


def test_encoder_clustering_is_deterministic_for_a_seed_balanced_and_follows_the_classes(digits: str, tmp_path: Path) -> None:
    data = load_image_data(digits)
    cfg = ExpertsConfig(num_experts=4, **ENCODER)
    runs = [cluster_labels(data, digits, cfg, str(tmp_path / f"{i}.npz"), str(tmp_path / f"{i}.pt")) for i in range(2)]
    (labels, sha), (labels_again, sha_again) = runs
    assert np.array_equal(labels, labels_again) and sha == sha_again and len(sha) == 64
    assert (tmp_path / "0.pt").read_bytes() == (tmp_path / "1.pt").read_bytes()
    sizes = np.bincount(labels, minlength=4).tolist()
    assert sum(sizes) == 1797 and _sizes_within(sizes, 0.10)
    # More of each class in one cluster than chance (0.28 for random features).
    y = data.labels.numpy()
    concentration = np.mean([np.bincount(labels[y == c], minlength=4).max() / (y == c).sum() for c in range(10)])
    assert concentration > 0.5
    # Labels: the upper bound, balanced too; asked of a store without labels it is refused.
    by_label, _ = cluster_labels(data, digits, dataclasses.replace(cfg, cluster_features="labels"), str(tmp_path / "l.npz"), "")
    assert _sizes_within(np.bincount(by_label).tolist(), 0.10)


def _weights(root: str) -> dict[str, torch.Tensor]:
    return checkpoint.read_shard(root, checkpoint.latest_step(root), 0)["ema"]["shadow"]


def test_a_set_built_with_encoder_clusters_by_separate_jobs_equals_one_built_in_one_job(
    digits: str, encoder_set: str, tmp_path: Path,
) -> None:
    cfg = ExpertsConfig(num_experts=2, **TINY_ROUTER, **ENCODER)
    one, apart = encoder_set, str(tmp_path / "apart")
    first = train_set(digits, apart, dataclasses.replace(cfg, expert=1, train_router="yes"))
    second = train_set(digits, apart, dataclasses.replace(cfg, expert=0))
    assert first.router is not None and second.router is None and [e.trained for e in second.experts] == [True, False]
    a, b = ExpertPaths.of(one, CheckpointConfig()), ExpertPaths.of(apart, CheckpointConfig())
    assert Path(a.encoder).read_bytes() == Path(b.encoder).read_bytes()
    assert np.array_equal(read_clusters(a.clusters)[0], read_clusters(b.clusters)[0])
    assert Path(a.manifest).read_text() == Path(b.manifest).read_text()
    manifest = read_manifest(b.manifest)
    assert manifest.extra["cluster_features"] == "encoder" and len(manifest.extra["encoder_sha256"]) == 64
    for i in range(2):
        ours, theirs = _weights(a.expert_checkpoints(i)), _weights(b.expert_checkpoints(i))
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    router_a, router_b = load_router(a.router_checkpoints)[0], load_router(b.router_checkpoints)[0]
    assert all(torch.equal(p, q) for p, q in zip(router_a.state_dict().values(), router_b.state_dict().values()))
    assert len(load_expert_set(b.manifest).experts) == 2


def test_a_set_whose_encoder_does_not_match_is_refused(digits: str, encoder_set: str, tmp_path: Path) -> None:
    cfg = ExpertsConfig(num_experts=2, train_router="no", expert=0, **TINY_ROUTER, **ENCODER)
    run_dir = str(tmp_path / "run")
    shutil.copytree(encoder_set, run_dir)
    paths = ExpertPaths.of(run_dir, CheckpointConfig())
    # Another encoder put in the set's place: refused before anything trains, naming the file.
    images = load_image_data(digits).images[:64]
    stranger = encoder_bytes(train_encoder(images, EncoderConfig(steps=1, dim=16, seed=9)), EncoderConfig(steps=1, dim=16, seed=9), 1)
    original = Path(paths.encoder).read_bytes()
    Path(paths.encoder).write_bytes(stranger)
    with pytest.raises(StrataError, match=r"clustering encoder '.*encoder.pt' \(sha256 .*\) is not the one the set's manifest"):
        train_set(digits, run_dir, dataclasses.replace(cfg, expert=1))
    Path(paths.encoder).unlink()
    with pytest.raises(StrataError, match="records the clustering encoder .* but the file is missing"):
        train_set(digits, run_dir, dataclasses.replace(cfg, expert=1))
    Path(paths.encoder).write_bytes(original)
    # A job asking for another encoder, or for other features, is told which setting differs.
    with pytest.raises(ConfigError, match=r"other settings \(extra.encoder: set has .*'steps': 10"):
        train_set(digits, run_dir, dataclasses.replace(cfg, expert=1, encoder_steps=11))
    with pytest.raises(ConfigError, match="extra.cluster_features: set has 'encoder', this job 'pixels'"):
        train_set(digits, run_dir, dataclasses.replace(cfg, expert=1, cluster_features="pixels"))


def _fixed_router(logits: list[float], num_classes: int = 0) -> Router:
    """A router whose answer does not depend on x_t: softmax(logits), plus per-class bias when told y."""
    router = Router(image_shape=(1, 8, 8), num_clusters=len(logits), hidden=8, num_classes=num_classes)
    with torch.no_grad():
        router.head.weight.zero_()
        router.head.bias.copy_(torch.tensor(logits))
    return router


def test_top2_mixes_the_two_best_experts_and_guidance_stays_inside_each_expert() -> None:
    experts = [_expert(0), _expert(1), _expert(2)]
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 30), torch.arange(4)
    with torch.no_grad():
        outs = [e(x, t, y) for e in experts]
        top2 = RoutedMixture(experts, _fixed_router([0.0, 2.0, 1.0]), mode="top2")(x, t, y)
    p = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert torch.allclose(top2, p[0] * outs[1] + p[1] * outs[2], atol=1e-6)
    # A router that sends a class to expert 1 and the null label to expert 0: per expert, both
    # passes of guidance run on expert 1; per pass, the guidance direction mixes the two experts.
    router = ClassRouter(image_shape=(1, 8, 8), num_clusters=2, hidden=8, num_classes=10)
    per_expert = RoutedMixture(experts[:2], router, mode="top1", guidance_routing="per_expert")
    per_pass = RoutedMixture(experts[:2], router, mode="top1", guidance_routing="per_pass")
    with torch.no_grad():
        assert torch.allclose(guided_prediction(per_expert, x, t, y, 2.0), guided_prediction(experts[1], x, t, y, 2.0), atol=1e-5)
        null = torch.full_like(y, 10)
        mixed = experts[0](x, t, null) + 2.0 * (experts[1](x, t, y) - experts[0](x, t, null))
        assert torch.allclose(guided_prediction(per_pass, x, t, y, 2.0), mixed, atol=1e-5)
    assert per_expert.routed.tolist() == [0.0, 4.0] and per_pass.routed.tolist() == [4.0, 4.0]


class ClassRouter(Router):
    """Expert 1 for any class, expert 0 for the null label."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        told = (y != self.null_label).float() if y is not None else torch.zeros(len(x_t))
        return torch.stack([5.0 - 10.0 * told, 10.0 * told - 5.0], 1)


def test_the_router_reports_its_accuracy_per_noise_level(digits: str, tmp_path: Path) -> None:
    cfg = ExpertsConfig(num_experts=2, train_router="only", router_labels=False,
                        **{**TINY_ROUTER, "router_steps": 30, "router_batch_size": 64})
    bands = train_set(digits, str(tmp_path / "run"), cfg).router.accuracy_by_noise
    assert list(bands) == ["0-5", "5-25", "25-50", "50-75", "75-100"]  # T = 100 in these tests
    # From x_t and t alone: it sees the image at small t; near T only noise is left.
    assert bands["0-5"] > 0.8 and bands["0-5"] > bands["75-100"] + 0.1
