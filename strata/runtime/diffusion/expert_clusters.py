"""The clusters of an expert set: which image each expert trains on.

``experts.cluster_features`` says what is clustered:

- ``pixels``: mini-batch k-means on the raw pixels, streamed from the store
  (:func:`strata.partitioners.clustering.cluster_store`);
- ``encoder``: balanced k-means (:mod:`.balanced_kmeans`) on the features of a contrastive
  encoder trained on the store in the same job (:mod:`.cluster_encoder`), written to
  ``encoder.pt`` beside the clusters before them;
- ``labels``: balanced k-means on one-hot class labels (the upper bound, only when asked).

A set is clustered once: ``clusters.npz`` (written atomically) is read by every later job and
refused unless made for this k, seed, features and store; with an encoder, the encoder file's
SHA-256 is in the clusters' meta and the set's manifest, and an encoder file that does not match
them is refused (:func:`check_encoder`).
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import torch

from strata.errors import ConfigError, StrataError
from strata.partitioners.clustering import KMeansConfig, cluster_store
from strata.runtime.diffusion.balanced_kmeans import balanced_kmeans
from strata.runtime.diffusion.cluster_encoder import (
    EncoderConfig,
    encoder_bytes,
    encoder_features,
    load_encoder,
    sha256,
    train_encoder,
)
from strata.runtime.diffusion.config import ExpertsConfig
from strata.runtime.diffusion.image_data import ImageData, open_image_store
from strata.storage import fs
from strata.storage.layout import IMAGES

log = logging.getLogger(__name__)

ENCODER_SHA = "encoder_sha256"
"""Key of the encoder file's SHA-256 in the clusters' meta and the manifest's ``extra``."""


def encoder_config(cfg: ExpertsConfig) -> EncoderConfig:
    return EncoderConfig(steps=cfg.encoder_steps, dim=cfg.encoder_dim, seed=cfg.cluster_seed)


def cluster_meta(cfg: ExpertsConfig, num_images: int, checksum: str) -> dict:
    """What a cluster file must have been made for (pixel clusterings keep the keys they had
    before other features existed, so older sets still open)."""
    meta = {"num_clusters": cfg.num_experts, "seed": cfg.cluster_seed, "epochs": cfg.cluster_epochs,
            "num_images": num_images, "images_checksum": checksum}
    if cfg.cluster_features != "pixels":
        meta["features"] = cfg.cluster_features
    if cfg.cluster_features == "encoder":
        meta["encoder"] = {"steps": cfg.encoder_steps, "dim": cfg.encoder_dim}
    return meta


def manifest_extra(cfg: ExpertsConfig) -> dict:
    """The clustering's entry in the set's manifest (``extra``); the encoder's SHA-256 joins it
    once the encoder exists."""
    extra: dict = {"cluster_features": cfg.cluster_features}
    if cfg.cluster_features == "encoder":
        extra["encoder"] = {"file": "encoder.pt", "steps": cfg.encoder_steps, "dim": cfg.encoder_dim, "seed": cfg.cluster_seed}
    return extra


def read_clusters(url: str) -> tuple[np.ndarray, dict]:
    """(cluster id per image, meta) of a cluster file."""
    try:
        with np.load(io.BytesIO(fs.read_bytes(url)), allow_pickle=False) as npz:
            return npz["labels"].astype(np.int64), json.loads(str(npz["meta"]))
    except (KeyError, ValueError, OSError) as exc:
        raise StrataError(f"cluster file '{url}' cannot be read ({exc}); delete it to cluster again") from exc


def write_clusters(url: str, labels: np.ndarray, centroids: np.ndarray, meta: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels.astype(np.int32), centroids=centroids.astype(np.float32), meta=np.array(json.dumps(meta)))
    fs.write_atomically(url, buffer.getvalue())


def check_encoder(encoder_url: str, expected_sha: str, recorded_in: str) -> None:
    """Refuse a set whose encoder file is missing or is not the one ``recorded_in`` names."""
    if not expected_sha:
        return
    if not fs.exists(encoder_url):
        raise StrataError(
            f"{recorded_in} records the clustering encoder '{encoder_url}' (sha256 {expected_sha[:12]}...) but the file is "
            "missing; restore it, or start a new set in another run_dir"
        )
    have = sha256(fs.read_bytes(encoder_url))
    if have != expected_sha:
        raise StrataError(
            f"the clustering encoder '{encoder_url}' (sha256 {have[:12]}...) is not the one {recorded_in} was made with "
            f"(sha256 {expected_sha[:12]}...): its clusters would not be this encoder's. Put the set's own encoder back, "
            "or start a new set in another run_dir"
        )


def cluster_labels(data: ImageData, store_url: str, cfg: ExpertsConfig, url: str, encoder_url: str, *,
                   progress: bool = False) -> tuple[np.ndarray, str]:
    """(the cluster of every image, the encoder's SHA-256 or ''): read from ``url`` when a job
    made them before (refused unless made for these settings and this store, and with the
    encoder now beside them), else computed and written there."""
    store = open_image_store(store_url)
    info = store.meta.arrays[IMAGES]
    want = cluster_meta(cfg, int(info["shape"][0]), str(info.get("checksum", "")))
    if fs.exists(url):
        labels, have = read_clusters(url)
        differ = [f"{key} {have.get(key)} (this job: {value})" for key, value in want.items() if have.get(key) != value]
        if differ:
            raise ConfigError(
                f"the expert set's clusters '{url}' were made with other settings: {'; '.join(differ)}. The experts of "
                "one set must share one clustering: use the same experts.num_experts and cluster_* and the same store, "
                "or another run_dir for a new set"
            )
        check_encoder(encoder_url, str(have.get(ENCODER_SHA, "")), f"the cluster file '{url}'")
        return labels, str(have.get(ENCODER_SHA, ""))
    log.info("experts: clustering %s images into %d clusters on %s", f"{len(data.images):,}", cfg.num_experts, cfg.cluster_features)
    if cfg.cluster_features == "pixels":
        labels, centroids = _pixel_clusters(store, cfg, progress)
        sha = ""
    else:
        features, sha = _features(data, cfg, encoder_url, progress)
        result = balanced_kmeans(features, cfg.num_experts, seed=cfg.cluster_seed)
        labels, centroids = result.labels, result.centroids
        log.info("experts: balanced clusters %s after %d rounds", result.sizes, result.iterations)
    write_clusters(url, labels, centroids, {**want, ENCODER_SHA: sha} if sha else want)
    return labels.astype(np.int64), sha


def _pixel_clusters(store, cfg: ExpertsConfig, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    kmeans = KMeansConfig(num_clusters=cfg.num_experts, epochs=cfg.cluster_epochs, seed=cfg.cluster_seed)
    result = cluster_store(store, IMAGES, kmeans, progress=progress)
    log.info("experts: %s", result.report.format())
    if result.report.empty_clusters:
        raise StrataError(
            f"k-means left {result.report.empty_clusters} of {cfg.num_experts} clusters empty ({result.report.sizes}); "
            "an expert needs images: use a smaller experts.num_experts, another cluster_seed, or cluster_features=encoder"
        )
    return result.labels, result.centroids


def _features(data: ImageData, cfg: ExpertsConfig, encoder_url: str, progress: bool) -> tuple[np.ndarray, str]:
    """The rows balanced k-means clusters, and the encoder's SHA-256 ('' for labels)."""
    if cfg.cluster_features == "labels":
        if data.labels is None:
            raise ConfigError("experts.cluster_features=labels needs a store with labels; use encoder or pixels")
        return np.eye(data.num_classes, dtype=np.float32)[data.labels.numpy()], ""
    images = torch.as_tensor(data.images[torch.arange(len(data.images))])
    if fs.exists(encoder_url):  # a job stopped between the encoder and the clusters: reuse it
        blob = fs.read_bytes(encoder_url)
        encoder, have = load_encoder(blob, encoder_url)
        if have != encoder_config(cfg):
            raise ConfigError(
                f"the clustering encoder '{encoder_url}' was trained with {have}, this job asks for {encoder_config(cfg)}; "
                "use the set's experts.encoder_* and cluster_seed, or another run_dir"
            )
    else:
        log.info("experts: training the clustering encoder (%d steps)", cfg.encoder_steps)
        encoder = train_encoder(images, encoder_config(cfg), progress=progress)
        blob = encoder_bytes(encoder, encoder_config(cfg), images.shape[1])
        fs.write_atomically(encoder_url, blob)
    return encoder_features(encoder, images), sha256(blob)
