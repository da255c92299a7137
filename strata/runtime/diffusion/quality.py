"""How good generated images are: a reference classifier per image store, its class decision
and a Frechet distance in its penultimate features (on digits, a "digits FID").

The reference classifier is trained once on the store's labelled images and cached inside
the store (format in :mod:`strata.storage.layout`)::

    STORE/quality/classifier/
      weights.pt     torch state dict (read with weights_only=True)
      info.json      architecture, recipe, held-out accuracy, fingerprint of the training data

Both files are written into a hidden sibling folder and moved into place together, so a
cache is either whole or absent. The fingerprint is taken from the store's own checksums of
``images/data`` and ``images/label``; when it, or the training recipe, no longer matches
what the cache was made from, the classifier is retrained (and the reason logged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from strata.errors import StoreError
from strata.models.classifier import ImageClassifier
from strata.runtime.diffusion.image_data import (
    ImageData,
    load_image_data,
    open_image_store,
)
from strata.storage import fs
from strata.storage.layout import IMAGE_LABEL, IMAGES, QUALITY_CLASSIFIER
from strata.storage.store import DatasetStore

log = logging.getLogger(__name__)

WEIGHTS = "weights.pt"
INFO = "info.json"


@dataclass
class ClassifierRecipe:
    """How the reference classifier is trained; part of what its cache is keyed on."""

    seed: int = 0
    """Seed of the held-out split, the initial weights and the batch order."""
    epochs: int = 10
    """Passes over the training images (fewer when ``max_steps`` is reached first)."""
    max_steps: int = 4000
    """Upper bound on optimizer steps, so large stores train in bounded time."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 2e-3
    """Peak Adam learning rate (cosine-decayed to zero)."""
    holdout_fraction: float = 0.15
    """Share of labelled images kept out of training to measure accuracy."""
    max_images: int = 60_000
    """Images drawn from larger stores (uniformly, by seed) to train and hold out."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("quality recipe: epochs, max_steps and batch_size must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"quality recipe: holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.lr <= 0 or self.max_images < 10:
            raise ValueError("quality recipe: lr must be > 0 and max_images >= 10")


@dataclass
class ClassifierInfo:
    """What the cache records about a trained reference classifier."""

    heldout_accuracy: float
    """Accuracy on the held-out images (never trained on)."""
    num_train: int
    num_heldout: int
    fingerprint: str
    """Hash of the store's image and label checksums: which data it learnt from."""
    recipe: dict[str, Any]
    architecture: dict[str, Any]
    train_seconds: float
    trained_at: float


@dataclass
class SampleQualityReport:
    """Quality of a batch of class-conditional samples."""

    match_rate: float
    """Share of samples the reference classifier assigns to the class they were asked for."""
    fid: float
    """Frechet distance between sample and reference features (lower is better)."""
    n: int
    """Number of samples."""


# -- the cached reference classifier -------------------------------------------------------------


def reference_classifier(
    store_url: str,
    *,
    seed: int = 0,
    progress: bool = False,
    recipe: ClassifierRecipe | None = None,
    retrain: bool = False,
) -> ImageClassifier:
    """The reference classifier of an image store: from its cache when that was made from the
    same images with the same recipe, else trained now (seconds on digits) and cached.

    ``seed`` is the recipe's seed when no ``recipe`` is given. ``retrain`` ignores any cache,
    a corrupt one included. The result is in eval mode with gradients off. In a multi-process
    job call it on one rank first (rank 0, then a barrier): ranks that all find no cache would
    each train and race to write it.
    """
    recipe = recipe or ClassifierRecipe(seed=seed)
    store = open_image_store(store_url)
    if not store.has(IMAGE_LABEL):
        raise StoreError(
            f"store '{store.url}' holds unlabelled images: the reference classifier learns from labels; "
            "ingest the images with their labels (strata ingest images ... --labels FILE)"
        )
    cache = fs.join(store.url, QUALITY_CLASSIFIER)
    fingerprint = data_fingerprint(store)
    if not retrain and fs.exists(cache):
        info = _read_info(cache)
        stale = _staleness(info, fingerprint, recipe)
        if stale is None:
            model = _read_weights(cache, info)
            log.info("reference classifier of %s: cached, held-out accuracy %.3f", store.url, info.heldout_accuracy)
            return _frozen(model)
        log.warning("reference classifier of %s: retraining, %s", store.url, stale)
    model, info = train_classifier(_training_images(store, recipe), recipe, fingerprint=fingerprint, progress=progress)
    _write_cache(cache, model, info)
    log.info(
        "reference classifier of %s: held-out accuracy %.3f on %d images (trained on %d in %.1fs)",
        store.url, info.heldout_accuracy, info.num_heldout, info.num_train, info.train_seconds,
    )
    return _frozen(model)


def _training_images(store: DatasetStore, recipe: ClassifierRecipe) -> ImageData:
    """The store's images, or a seeded uniform sample of ``recipe.max_images`` of them read
    block by block, so a store larger than memory still yields a classifier."""
    count = int(store.meta.arrays[IMAGES]["shape"][0])
    if count <= recipe.max_images:
        return load_image_data(store.url)
    pick = np.sort(np.random.default_rng(recipe.seed).choice(count, recipe.max_images, replace=False))
    parts = []
    for start, block in store.iter_blocks(IMAGES):
        inside = pick[(pick >= start) & (pick < start + len(block))]
        parts.append(block[inside - start])
    labels = store.read(IMAGE_LABEL)[pick]
    return ImageData(torch.from_numpy(np.concatenate(parts)), torch.from_numpy(labels), int(store.meta.num_classes))


def classifier_info(store_url: str) -> ClassifierInfo:
    """What the cached reference classifier of a store was trained on and how well it did."""
    store = open_image_store(store_url)
    cache = fs.join(store.url, QUALITY_CLASSIFIER)
    if not fs.exists(cache):
        raise StoreError(f"store '{store.url}' has no cached reference classifier; reference_classifier() trains one")
    return _read_info(cache)


def data_fingerprint(store: DatasetStore) -> str:
    """A hash of the checksums the store's marker records for its images and labels."""
    arrays = {key: store.meta.arrays[key] for key in (IMAGES, IMAGE_LABEL) if key in store.meta.arrays}
    text = json.dumps({key: [info["shape"], info["checksum"]] for key, info in arrays.items()}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _staleness(info: ClassifierInfo, fingerprint: str, recipe: ClassifierRecipe) -> str | None:
    """Why the cache cannot serve (None when it can)."""
    if info.fingerprint != fingerprint:
        return f"the images it was trained on have changed (fingerprint {info.fingerprint[:12]} != {fingerprint[:12]})"
    wanted = dataclasses.asdict(recipe)
    if info.recipe != wanted:
        changed = sorted(k for k in set(wanted) | set(info.recipe) if wanted.get(k) != info.recipe.get(k))
        return f"it was trained with another recipe ({', '.join(f'{k}: {info.recipe.get(k)} -> {wanted.get(k)}' for k in changed)})"
    return None


def _corrupt(cache: str, what: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"the cached reference classifier in '{cache}' is corrupt: {what} cannot be read ({type(exc).__name__}: {exc}); "
        "delete that folder or call reference_classifier(..., retrain=True) to train it again"
    )


def _read_info(cache: str) -> ClassifierInfo:
    try:
        raw = json.loads(fs.read_text(fs.join(cache, INFO)))
        return ClassifierInfo(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise _corrupt(cache, INFO, exc) from exc


def _read_weights(cache: str, info: ClassifierInfo) -> ImageClassifier:
    try:
        state = torch.load(io.BytesIO(fs.read_bytes(fs.join(cache, WEIGHTS))), weights_only=True)
        model = ImageClassifier.from_config(info.architecture)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise _corrupt(cache, WEIGHTS, exc) from exc
    return model


def _write_cache(cache: str, model: ImageClassifier, info: ClassifierInfo) -> None:
    tmp = fs.sibling_temp(cache)
    try:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        fs.write_bytes(fs.join(tmp, WEIGHTS), buffer.getvalue())
        fs.write_text(fs.join(tmp, INFO), json.dumps(dataclasses.asdict(info), indent=1, sort_keys=True))
        fs.replace_atomically(tmp, cache)
    finally:
        fs.remove(tmp)


def _frozen(model: ImageClassifier) -> ImageClassifier:
    model.eval()
    model.requires_grad_(False)
    return model


# -- training ----------------------------------------------------------------------------------


def train_classifier(
    data: ImageData, recipe: ClassifierRecipe, *, fingerprint: str = "", progress: bool = False
) -> tuple[ImageClassifier, ClassifierInfo]:
    """Train an :class:`ImageClassifier` on ``data``'s labelled images, holding out a share to
    measure it. Deterministic for a recipe seed; the global RNG is left as it was."""
    if data.labels is None:
        raise StoreError("the reference classifier learns from labels, and these images have none")
    if data.num_classes < 2:
        raise StoreError(f"the reference classifier needs at least two classes, the images have {data.num_classes}")
    started = time.perf_counter()
    # Seeded from the recipe inside a forked RNG: the same recipe gives the same classifier,
    # and the caller's global RNG (its sampling, say) is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        order = torch.randperm(len(data.images))[: recipe.max_images]
        if len(order) < 10:
            raise StoreError(f"the reference classifier needs at least 10 labelled images, the store has {len(order)}")
        num_heldout = max(1, int(round(recipe.holdout_fraction * len(order))))
        heldout, train = order[:num_heldout], order[num_heldout:]
        _, channels, height, width = data.images.shape
        model = ImageClassifier(int(channels), (int(height), int(width)), data.num_classes)
        _fit(model, data.images, data.labels, train, recipe, progress)
    accuracy = class_match_rate(model, data.images[heldout], data.labels[heldout])
    info = ClassifierInfo(
        heldout_accuracy=accuracy,
        num_train=len(train),
        num_heldout=len(heldout),
        fingerprint=fingerprint,
        recipe=dataclasses.asdict(recipe),
        architecture=model.config(),
        train_seconds=time.perf_counter() - started,
        trained_at=time.time(),
    )
    return model, info


def _fit(model: ImageClassifier, x: Tensor, y: Tensor, train: Tensor, recipe: ClassifierRecipe, progress: bool) -> None:
    """Adam with a cosine-decayed learning rate over the images that ``train`` indexes;
    leaves ``model`` in eval mode."""
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    epochs = min(recipe.epochs, math.ceil(recipe.max_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    model.train()
    bar = tqdm(range(epochs), desc="reference classifier", unit="epoch", disable=not progress)
    for _ in bar:
        perm = train[torch.randperm(len(train))]
        for start in range(0, len(perm), recipe.batch_size):
            batch = perm[start : start + recipe.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


# -- measures ----------------------------------------------------------------------------------


@torch.no_grad()
def _batched(fn: Any, model: ImageClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = [fn(images[i : i + batch_size].to(device=device, dtype=torch.float32)).cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def classifier_features(classifier: ImageClassifier, images: Tensor) -> Tensor:
    """Penultimate features (N, feature_dim) of images in [-1, 1]."""
    return _batched(classifier.features, classifier, images)


def class_match_rate(classifier: ImageClassifier, images: Tensor, requested_labels: Tensor | np.ndarray) -> float:
    """Share of ``images`` the classifier assigns to the class in ``requested_labels``."""
    requested = torch.as_tensor(requested_labels).reshape(-1)
    if len(requested) != len(images):
        raise ValueError(f"{len(requested)} requested labels for {len(images)} images; give one per image")
    if len(images) == 0:
        raise ValueError("no images to classify")
    predicted = _batched(classifier, classifier, images).argmax(dim=1)
    return float((predicted == requested.to(predicted.device)).double().mean())


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).

    In float64; square roots through symmetric eigendecompositions with eigenvalues clipped
    at zero, so rank-deficient covariances (fewer samples than features, dead units) give a
    finite, real answer. Rounding can make it a hair negative; it is reported as 0 then.
    """
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in width: {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_root = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(distance, 0.0)


def _as_features(features: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be (samples, features), got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"{name} has {array.shape[0]} sample(s); a covariance needs at least 2")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def quality_report(
    classifier: ImageClassifier, generated: Tensor, requested_labels: Tensor | np.ndarray, reference_images: Tensor
) -> SampleQualityReport:
    """Match rate of ``generated`` against the classes they were asked for, and the Frechet
    distance between their features and those of ``reference_images`` (e.g. the store's)."""
    features = classifier_features(classifier, generated)  # (n, feature_dim)
    requested = torch.as_tensor(requested_labels).reshape(-1)
    if len(requested) != len(generated):
        raise ValueError(f"{len(requested)} requested labels for {len(generated)} generated images; give one per image")
    with torch.no_grad():
        predicted = classifier.head(features.to(next(classifier.parameters()).device)).argmax(dim=1).cpu()
    return SampleQualityReport(
        match_rate=float((predicted == requested).double().mean()),
        fid=frechet_distance(features, classifier_features(classifier, reference_images)),
        n=len(generated),
    )
