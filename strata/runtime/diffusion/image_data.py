"""An image data set from a store (format in :mod:`strata.storage.layout`): all in memory, or
read a batch at a time.

Digits- and CIFAR-size sets fit in memory and train fastest there. A set larger than memory is
opened with ``in_memory=False``: the images stay in the store and each batch reads only the
chunks that hold its rows, through the store's row reader with a bounded cache of decoded
chunks (:class:`StoredImages`).
Either way ``data.images[index]`` gives the same float32 rows, so the training loop does not
know which it has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strata.errors import StoreError
from strata.storage.layout import IMAGE_LABEL, IMAGES
from strata.storage.rows import ChunkedRows
from strata.storage.store import DatasetStore


class StoredImages:
    """The images of a store, read by row index on demand; indexes like an (N, C, H, W) tensor.

    ``images[index]`` reads through the store's row reader (:class:`strata.storage.rows.ChunkedRows`):
    only the chunks that hold the rows, runs of neighbouring chunks in one read, the most recently
    used chunks kept within ``cache_bytes``. A corrupt chunk is a StoreError naming the rows, at
    the batch that reads it.
    """

    def __init__(self, store: DatasetStore, *, cache_bytes: int) -> None:
        self.rows = ChunkedRows(store, IMAGES, cache_bytes=cache_bytes)
        self.shape = torch.Size(self.rows.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def chunks_read(self) -> int:
        """Chunks decoded so far (cache misses), for tests and benchmarks."""
        return self.rows.chunks_read

    def __getitem__(self, index: Tensor | np.ndarray | list[int]) -> Tensor:
        """float32 (len(index), C, H, W): the rows ``index`` in the order given."""
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"image ids must be in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        return torch.from_numpy(self.rows.gather(rows)[0])


@dataclass
class ImageData:
    """An image data set: images in memory, or read from the store a batch at a time."""

    images: Tensor | StoredImages
    """float32 (N, C, H, W), values in [-1, 1]: a tensor, or rows read from the store on indexing."""
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


def load_image_data(url: str, *, in_memory: bool = True, cache_bytes: int = 256 << 20) -> ImageData:
    """The images (and labels) of the store at ``url``: all read now (``in_memory``), or left in
    the store and read by row through a chunk cache of ``cache_bytes``. Labels are always read
    (8 bytes an image). A corrupt chunk is a StoreError naming it."""
    store = open_image_store(url)
    array = store.array(IMAGES)
    if array.ndim != 4 or array.dtype != np.float32:
        raise StoreError(
            f"store '{store.url}': '{IMAGES}' must be float32 (N, C, H, W), found {array.dtype} {array.shape}; re-ingest it"
        )
    images = store.read(IMAGES) if in_memory else StoredImages(store, cache_bytes=cache_bytes)
    labels = None
    if store.has(IMAGE_LABEL):
        labels = store.read(IMAGE_LABEL)
        if labels.shape != (images.shape[0],):
            raise StoreError(
                f"store '{store.url}': '{IMAGE_LABEL}' has shape {labels.shape} for {images.shape[0]} images; re-ingest it"
            )
    return ImageData(
        images=torch.from_numpy(images) if in_memory else images,
        labels=torch.from_numpy(labels) if labels is not None else None,
        num_classes=int(store.meta.num_classes) if labels is not None else 0,
    )
