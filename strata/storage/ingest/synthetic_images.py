"""Synthetic labelled images of any size and count, written block by block.

Each class has its own structure, so a classifier can tell the classes apart and a
class-conditional diffusion model has something to learn:

- a grating whose orientation (pi * k / K) and frequency (three steps, by k mod 3) depend on
  the class k, with a random phase per image;
- a soft blob whose centre sits on a circle at angle 2 pi k / K, jittered per image;
- per-channel colour weights that rotate with the class.

Per image there is a random amplitude and Gaussian pixel noise. Images are drawn in groups of
``_GROUP`` from a random stream seeded by (seed, group), so the output depends on the seed
only, never on how many images are written at once; memory is O(one write block).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.ingest.images import image_meta
from strata.storage.layout import IMAGE_LABEL, IMAGES, default_chunk_rows
from strata.storage.store import DatasetMeta, DatasetWriter

_GROUP = 256  # images per random stream; fixed, so results never depend on the write block


@dataclass
class SyntheticImagesConfig:
    """Size and signal of a generated image set."""

    num_images: int = 10_000
    """Number of images."""
    image_size: int = 16
    """Height and width in pixels."""
    channels: int = 1
    """Channels per image."""
    num_classes: int = 10
    """Number of classes; labels are drawn uniformly."""
    noise: float = 0.1
    """Standard deviation of the Gaussian pixel noise (images are in [-1, 1])."""
    seed: int = 0
    """Seed of every random draw: the same config gives the same images."""

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise IngestError(f"synthetic_images.num_images must be at least 1, got {self.num_images}")
        if self.image_size < 4:
            raise IngestError(f"synthetic_images.image_size must be at least 4 pixels, got {self.image_size}")
        if self.channels < 1:
            raise IngestError(f"synthetic_images.channels must be at least 1, got {self.channels}")
        if self.num_classes < 1:
            raise IngestError(f"synthetic_images.num_classes must be at least 1, got {self.num_classes}")
        if not 0.0 <= self.noise <= 1.0:
            raise IngestError(f"synthetic_images.noise must be in [0, 1], got {self.noise}")


def generate_group(cfg: SyntheticImagesConfig, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, C, S, S) float32 in [-1, 1], labels (n,) int64) of images
    [group * _GROUP, (group + 1) * _GROUP) (fewer in the last group)."""
    lo = group * _GROUP
    n = min(cfg.num_images, lo + _GROUP) - lo
    k_count, size = cfg.num_classes, cfg.image_size
    rng = np.random.default_rng([cfg.seed, group])
    labels = rng.integers(0, k_count, n, dtype=np.int64)
    k = labels.astype(np.float64)[:, None, None]  # (n, 1, 1)
    axis = np.linspace(-1.0, 1.0, size)
    y, x = axis[None, :, None], axis[None, None, :]  # (1, S, 1), (1, 1, S)

    theta = np.pi * k / k_count
    freq = 1.0 + 0.75 * (labels % 3).astype(np.float64)[:, None, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, (n, 1, 1))
    grating = np.cos(np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)  # (n, S, S)

    angle = 2.0 * np.pi * k / k_count
    cx = 0.5 * np.cos(angle) + 0.08 * rng.standard_normal((n, 1, 1))
    cy = 0.5 * np.sin(angle) + 0.08 * rng.standard_normal((n, 1, 1))
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.3**2))  # (n, S, S)

    channel = np.arange(cfg.channels, dtype=np.float64)
    colour = 0.6 + 0.4 * np.cos(2.0 * np.pi * (labels[:, None] / k_count + channel[None, :] / cfg.channels))  # (n, C)
    amplitude = rng.uniform(0.8, 1.1, (n, 1, 1, 1))
    base = (0.5 * grating + 1.2 * blob - 0.4)[:, None]  # (n, 1, S, S)
    images = amplitude * colour[:, :, None, None] * base
    images += cfg.noise * rng.standard_normal(images.shape)
    return np.clip(images, -1.0, 1.0).astype(np.float32), labels


def write_synthetic_images(
    cfg: SyntheticImagesConfig,
    url: str,
    name: str = "synthetic-images",
    *,
    overwrite: bool = False,
    progress: bool = False,
    block_images: int | None = None,
) -> DatasetMeta:
    """Generate the images of ``cfg`` and write them as a complete image store at ``url``.

    ``block_images``: images generated and appended at a time (default: about 16 MiB worth,
    rounded to whole groups); it bounds memory and never changes the result.
    """
    if fs.exists(url) and not overwrite:
        raise IngestError(f"'{url}' already exists; pass --overwrite to replace it")
    chw = (cfg.channels, cfg.image_size, cfg.image_size)
    rows = block_images or 4 * default_chunk_rows(4 * int(np.prod(chw)))
    groups_per_block = max(1, -(-rows // _GROUP))
    num_groups = -(-cfg.num_images // _GROUP)
    with DatasetWriter(url, name, num_nodes=cfg.num_images, overwrite=overwrite, source="synthetic-images") as writer:
        data = writer.appender(IMAGES, np.float32, chw)
        label = writer.appender(IMAGE_LABEL, np.int64)
        bar = tqdm(total=cfg.num_images, desc="generate", unit="img", disable=not progress)
        for first in range(0, num_groups, groups_per_block):
            parts = [generate_group(cfg, g) for g in range(first, min(num_groups, first + groups_per_block))]
            data.append(np.concatenate([p[0] for p in parts]))
            label.append(np.concatenate([p[1] for p in parts]))
            bar.update(sum(len(p[1]) for p in parts))
        bar.close()
        meta = image_meta(cfg.num_images, chw, None, layout="nchw", dtype=np.float32, value_range=(-1.0, 1.0))
        meta["num_classes"] = cfg.num_classes  # every class may be drawn, even if a small set misses one
        return writer.commit(**meta, synthetic_images=dataclasses.asdict(cfg))

