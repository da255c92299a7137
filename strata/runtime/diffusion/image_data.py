"""An image data set from a store (format in :mod:`strata.storage.layout`): all in memory, or
read a batch at a time.

Digits- and CIFAR-size sets fit in memory and train fastest there. A set larger than memory is
opened with ``in_memory=False``: the images stay in the store and each batch reads only the
chunks that hold its rows, through a bounded cache of decoded chunks (:class:`StoredImages`).
Either way ``data.images[index]`` gives the same float32 rows, so the training loop does not
know which it has.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strata.errors import StoreError
from strata.storage.layout import IMAGE_LABEL, IMAGES
from strata.storage.store import DatasetStore


class StoredImages:
    """The images of a store, read by row index on demand; indexes like an (N, C, H, W) tensor.

    ``images[index]`` groups the rows by chunk, decodes each chunk it needs once and keeps the
    most recently used chunks within ``cache_bytes`` (a chunk larger than the budget is read and
    dropped). A corrupt chunk is a StoreError naming the rows, at the batch that reads it.
    """

    def __init__(self, store: DatasetStore, *, cache_bytes: int) -> None:
        array = store.array(IMAGES)
        self.store = store
        self.shape = torch.Size(array.shape)
        self.chunk_rows = int(array.chunks[0])
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.chunks_read = 0
        """Chunks decoded so far (cache misses), for tests and benchmarks."""

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, chunk: int) -> np.ndarray:
        block = self._cache.get(chunk)
        if block is not None:
            self._cache.move_to_end(chunk)
            return block
        start = chunk * self.chunk_rows
        block = self.store.read(IMAGES, start, min(start + self.chunk_rows, len(self)))
        self.chunks_read += 1
        if block.nbytes <= self.cache_bytes:
            self._cache[chunk] = block
            self._cached_bytes += block.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.nbytes
        return block

    def __getitem__(self, index: Tensor | np.ndarray | list[int]) -> Tensor:
        """float32 (len(index), C, H, W): the rows ``index`` in the order given."""
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"image ids must be in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        chunk_of = rows // self.chunk_rows
        for chunk in np.unique(chunk_of):
            picked = np.flatnonzero(chunk_of == chunk)
            out[picked] = self._chunk(int(chunk))[rows[picked] - chunk * self.chunk_rows]
        return torch.from_numpy(out)


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
