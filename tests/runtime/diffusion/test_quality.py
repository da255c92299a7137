"""The image quality measure: the cached reference classifier, its match rate and the
Frechet distance in its features."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from strata.errors import StoreError
from strata.runtime.diffusion import quality
from strata.runtime.diffusion.image_data import load_image_data
from strata.runtime.diffusion.quality import (
    ClassifierRecipe,
    class_match_rate,
    classifier_info,
    frechet_distance,
    quality_report,
    reference_classifier,
)
from strata.storage import fs, layout
from strata.storage.ingest.images import ingest_digits, write_images
from strata.storage.ingest.synthetic_images import (
    SyntheticImagesConfig,
    write_synthetic_images,
)
from strata.storage.store import DatasetStore
from tests.helpers.cli import run_strata
from tests.helpers.graphs import random_graph

FAST = ClassifierRecipe(epochs=3)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The digits store with its reference classifier trained (once for this module)."""
    url = str(tmp_path_factory.mktemp("quality") / "digits")
    ingest_digits(url)
    return url, reference_classifier(url)


@pytest.fixture
def small_store(store_root: str) -> str:
    """300 labelled 3x8x8 images, on a local path and on memory://."""
    url = f"{store_root}/small"
    write_synthetic_images(SyntheticImagesConfig(num_images=300, image_size=8, channels=3, num_classes=3, seed=1), url)
    return url


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = quality.train_classifier

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(quality, "train_classifier", counted)
    return calls


# -- the reference classifier ------------------------------------------------------------------


def test_digits_classifier_is_accurate_on_held_out_images(digits) -> None:
    url, classifier = digits
    info = classifier_info(url)
    assert info.heldout_accuracy >= 0.9 and info.num_heldout >= 200
    assert info.num_train + info.num_heldout == 1797
    data = load_image_data(url)
    assert class_match_rate(classifier, data.images, data.labels) >= 0.95
    # Asking for the wrong class is caught: shifted labels almost never match.
    assert class_match_rate(classifier, data.images, (data.labels + 1) % 10) < 0.05
    assert not any(p.requires_grad for p in classifier.parameters()) and not classifier.training


def test_cache_is_reused_without_training(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    url, classifier = digits
    before = classifier_info(url)
    calls = _count_training(monkeypatch)
    again = reference_classifier(url)
    assert calls == [] and again is not classifier
    x = load_image_data(url).images[:64]
    with torch.no_grad():
        assert torch.equal(again(x), classifier(x))
    assert classifier_info(url).trained_at == before.trained_at
    # The cache lives beside the arrays without touching them, and left no partial folder.
    assert DatasetStore.open(url).verify() == []
    assert fs.listdir(fs.join(url, "quality")) == ["classifier"]
    assert "held-out accuracy" in run_strata("info", url).stdout


def test_stale_cache_is_retrained_with_the_reason(small_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = _count_training(monkeypatch)
    reference_classifier(small_store, recipe=FAST)
    reference_classifier(small_store, recipe=FAST)
    assert len(calls) == 1

    info_url = fs.join(small_store, layout.QUALITY_CLASSIFIER, "info.json")
    raw = json.loads(fs.read_text(info_url))
    true_fingerprint = raw["fingerprint"]
    fs.write_text(info_url, json.dumps({**raw, "fingerprint": "0" * 32}))
    with caplog.at_level(logging.WARNING, logger="strata.runtime.diffusion.quality"):
        reference_classifier(small_store, recipe=FAST)
    assert len(calls) == 2 and "retraining, the images it was trained on have changed" in caplog.text
    assert classifier_info(small_store).fingerprint == true_fingerprint

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="strata.runtime.diffusion.quality"):
        reference_classifier(small_store, recipe=ClassifierRecipe(epochs=3, seed=1))
    assert len(calls) == 3 and "another recipe (seed: 0 -> 1)" in caplog.text


def test_corrupt_cache_is_a_clear_error(small_store: str) -> None:
    reference_classifier(small_store, recipe=FAST)
    cache = fs.join(small_store, layout.QUALITY_CLASSIFIER)
    weights = fs.read_bytes(fs.join(cache, "weights.pt"))
    fs.write_bytes(fs.join(cache, "weights.pt"), weights[: len(weights) // 2])
    with pytest.raises(StoreError, match="is corrupt: weights.pt cannot be read .*retrain=True"):
        reference_classifier(small_store, recipe=FAST)
    fs.write_text(fs.join(cache, "info.json"), "{not json")
    with pytest.raises(StoreError, match="is corrupt: info.json cannot be read"):
        reference_classifier(small_store, recipe=FAST)
    fixed = reference_classifier(small_store, recipe=FAST, retrain=True)
    assert classifier_info(small_store).heldout_accuracy > 0.5
    assert fixed(load_image_data(small_store).images[:4]).shape == (4, 3)


def test_any_labelled_image_store_gets_a_classifier(small_store: str) -> None:
    classifier = reference_classifier(small_store)
    assert classifier.input_shape == (3, 8, 8)
    assert classifier_info(small_store).heldout_accuracy >= 0.9


def test_large_stores_train_on_a_sample(small_store: str) -> None:
    recipe = ClassifierRecipe(epochs=1, max_images=100)
    reference_classifier(small_store, recipe=recipe)
    info = classifier_info(small_store)
    assert (info.num_train, info.num_heldout) == (85, 15)
    # The sample is read block by block; each image keeps its own label.
    full = load_image_data(small_store)
    sample = quality._training_images(DatasetStore.open(small_store), recipe)
    assert len(sample.images) == 100 and len(set(sample.labels.tolist())) == 3
    flat = full.images.reshape(len(full.images), -1)
    rows = [int(torch.nonzero((flat == image.reshape(-1)).all(1))[0]) for image in sample.images]
    assert rows == sorted(set(rows)) and torch.equal(full.labels[rows], sample.labels)


def test_unlabelled_and_graph_stores_are_refused(tmp_path: Path) -> None:
    from strata.storage.ingest.common import write_graph_data

    write_images(np.zeros((20, 8, 8), np.uint8), str(tmp_path / "plain"))
    with pytest.raises(StoreError, match="holds unlabelled images: the reference classifier learns from labels"):
        reference_classifier(str(tmp_path / "plain"))
    write_graph_data(random_graph(20, 40), str(tmp_path / "graph"), "g", symmetrize=True)
    with pytest.raises(StoreError, match="holds no images"):
        reference_classifier(str(tmp_path / "graph"))
    with pytest.raises(StoreError, match="has no cached reference classifier"):
        classifier_info(str(tmp_path / "plain"))


def test_quality_report_tells_real_digits_from_noise(digits) -> None:
    url, classifier = digits
    data = load_image_data(url)
    generated, requested, reference = data.images[:900], data.labels[:900], data.images[900:]
    real = quality_report(classifier, generated, requested, reference)
    noise = quality_report(classifier, torch.rand(900, 1, 8, 8) * 2 - 1, requested, reference)
    assert real.n == noise.n == 900
    assert real.match_rate >= 0.95 and noise.match_rate < 0.3
    assert noise.fid > 5 * real.fid
    with pytest.raises(ValueError, match="takes images of shape \\(N, 1, 8, 8\\)"):
        quality_report(classifier, torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64), reference)
    with pytest.raises(ValueError, match="3 requested labels for 4"):
        class_match_rate(classifier, data.images[:4], data.labels[:3])


# -- the Frechet distance ----------------------------------------------------------------------


def _with_moments(mean: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is ``mean`` and sample covariance exactly diag(std**2)."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample covariance now I
    return mean + z * std


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    a = np.random.default_rng(0).standard_normal((500, 32)) @ np.random.default_rng(1).standard_normal((32, 32))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))
    few = a[:10]  # fewer samples than features: a rank-deficient covariance still works
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mean_a, std_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 1.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([3.0, 0.5, 0.5, 1.0])
    a, b = _with_moments(mean_a, std_a, 400, 0), _with_moments(mean_b, std_b, 300, 1)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)  # = 5.25 + 6.5
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_is_symmetric_and_agrees_with_a_general_matrix_root() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((250, 16)) @ rng.standard_normal((16, 16)) + 0.3
    forward, backward = frechet_distance(a, b), frechet_distance(b, a)
    assert forward == pytest.approx(backward, rel=1e-9)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    reference = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
    assert forward == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_grows_with_a_mean_shift() -> None:
    a = np.random.default_rng(4).standard_normal((400, 8))
    direction = np.ones(8) / np.sqrt(8)
    distances = [frechet_distance(a, a + s * direction) for s in (0.0, 0.5, 1.0, 2.0)]
    # Equal covariances: the distance is exactly the squared shift.
    assert distances == pytest.approx([0.0, 0.25, 1.0, 4.0], abs=1e-9)


def test_frechet_distance_refuses_bad_features() -> None:
    with pytest.raises(ValueError, match="differ in width: 4 and 5"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="has 1 sample"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(np.full((3, 4), np.nan), np.zeros((3, 4)))
