"""Loading an image data set from a store into memory (format in :mod:`strata.storage.layout`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from strata.errors import StoreError
from strata.storage.layout import IMAGE_LABEL, IMAGES
from strata.storage.store import DatasetStore


@dataclass
class ImageData:
    """A whole image data set in memory."""

    images: Tensor
    """float32 (N, C, H, W), values in [-1, 1]."""
    labels: Tensor | None
    """int64 (N,) class ids, or None for an unlabelled set."""
    num_classes: int
    """Number of classes; 0 when unlabelled."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def open_image_store(url: str) -> DatasetStore:
    """The complete store at ``url``, refused unless it holds images."""
    store = DatasetStore.open(url)  # refuses missing, incomplete and newer-schema stores
    if not store.has(IMAGES):
        held = ", ".join(store.meta.arrays) or "nothing"
        raise StoreError(
            f"store '{store.url}' holds no images (no '{IMAGES}'; it holds {held}); write an image store with "
            "'strata ingest images', 'strata ingest digits' or 'strata ingest synthetic-images'"
        )
    return store


def load_image_data(url: str) -> ImageData:
    """Every image (and label) of the store at ``url``; a corrupt chunk is a StoreError naming it."""
    store = open_image_store(url)
    images = store.read(IMAGES)
    if images.ndim != 4 or images.dtype.name != "float32":
        raise StoreError(
            f"store '{store.url}': '{IMAGES}' must be float32 (N, C, H, W), found {images.dtype} {images.shape}; re-ingest it"
        )
    labels = None
    if store.has(IMAGE_LABEL):
        labels = store.read(IMAGE_LABEL)
        if labels.shape != (images.shape[0],):
            raise StoreError(
                f"store '{store.url}': '{IMAGE_LABEL}' has shape {labels.shape} for {images.shape[0]} images; re-ingest it"
            )
    return ImageData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels) if labels is not None else None,
        num_classes=int(store.meta.num_classes) if labels is not None else 0,
    )
