"""Image arrays -> the ``images/*`` arrays of a store (format in :mod:`strata.storage.layout`).

Sources:

- an ``.npy`` file holding all images;
- an ``.npz`` file: images under ``images``, ``x`` or ``data``; labels (optional) under
  ``labels``, ``label`` or ``y``;
- a folder of per-image ``.npy`` files, taken in file-name order (zero-pad numbers);
- labels may instead come from a separate ``.npy`` file (``labels=``).

Shapes: N x C x H x W, N x H x W x C (C in 1, 3, 4) or N x H x W (C = 1). Which axis holds the
channels is read from which one has a channel-sized extent, NCHW first when both do; pass
``layout="nchw"`` or ``"nhwc"`` to decide it (and to allow other channel counts).

Values: uint8 images are 0..255; float16/32/64 images are in [0, 1], or in [-1, 1] with
``value_range=(-1, 1)``. Everything is stored as float32 in [-1, 1], the range diffusion models
train in. Images are checked and written block by block, so a local ``.npy`` larger than memory
is read through a memory map; any bad image aborts the write and leaves no store behind.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.layout import IMAGE_LABEL, IMAGES, default_chunk_rows
from strata.storage.store import DatasetMeta, DatasetWriter

log = logging.getLogger(__name__)

IMAGE_KEYS = ("images", "x", "data")
LABEL_KEYS = ("labels", "label", "y")
ACCEPTED_DTYPES = ("uint8", "float16", "float32", "float64")
CHANNEL_COUNTS = (1, 3, 4)
LAYOUTS = ("nchw", "nhwc")
_RANGE_SLACK = 1e-5  # float rounding (x / 255 landing on 1.0000001) is not an error


@dataclass
class _Images:
    """Where images come from, before any pixel is read."""

    count: int
    shape: tuple[int, ...]
    """One image's shape as stored in the source (no leading N)."""
    dtype: np.dtype
    blocks: Callable[[int], Iterator[tuple[int, np.ndarray]]]
    """rows -> (first image index, raw block of up to ``rows`` images)."""
    where: str


# -- public entry points ---------------------------------------------------------------------


def ingest_images(
    source: str,
    url: str,
    *,
    labels: str | None = None,
    layout: str | None = None,
    value_range: tuple[float, float] | None = None,
    name: str = "",
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Read images (and labels) from ``source`` (see the module docstring) and write a
    complete image store at ``url``."""
    if not fs.exists(source):
        raise IngestError(
            f"input '{source}' does not exist: expected a .npy or .npz file or a folder of per-image .npy files"
        )
    if labels is not None and not fs.exists(labels):
        raise IngestError(f"labels file '{labels}' does not exist")
    _refuse_existing(url, overwrite)
    label_array = _load_labels_file(labels) if labels is not None else None
    if fs.isdir(source):
        images = _folder_images(source)
    elif str(source).endswith(".npz"):
        images, npz_labels = _npz_images(source)
        if npz_labels is not None and label_array is not None:
            raise IngestError(
                f"'{source}' holds labels and a labels file '{labels}' was given too: keep one of them"
            )
        label_array = npz_labels if label_array is None else label_array
    elif str(source).endswith(".npy"):
        images = _array_images(_load_npy(source), source)
    else:
        raise IngestError(f"'{source}' is neither a .npy nor a .npz file nor a folder of .npy files")
    default_name = posixpath.basename(str(source).rstrip("/")).split(".")[0] or "images"
    return _write(
        images, url, labels=label_array, layout=layout, value_range=value_range,
        name=name or default_name, source=str(source), overwrite=overwrite, progress=progress,
    )


def write_images(
    images: np.ndarray | Sequence[np.ndarray],
    url: str,
    *,
    labels: np.ndarray | None = None,
    layout: str | None = None,
    value_range: tuple[float, float] | None = None,
    name: str = "images",
    source: str = "arrays",
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Write in-memory images (one array with a leading N axis, or a sequence of single
    images) with the same checks as :func:`ingest_images`."""
    _refuse_existing(url, overwrite)
    if isinstance(images, np.ndarray):
        found = _array_images(images, source)
    else:
        items = list(images)
        found = _sequence_images(len(items), lambda i: np.asarray(items[i]), lambda i: "", source)
    return _write(
        found, url, labels=labels, layout=layout, value_range=value_range,
        name=name, source=source, overwrite=overwrite, progress=progress,
    )


def ingest_digits(url: str, *, name: str = "digits", overwrite: bool = False) -> DatasetMeta:
    """scikit-learn's bundled digits set (1,797 8x8 grey images, values 0..16, 10 classes;
    shipped inside the package, so no download) as a 1x8x8 image store."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise IngestError("the digits set ships with scikit-learn, which is not installed: pip install scikit-learn") from exc
    digits = load_digits()
    return write_images(
        digits.images / 16.0,  # (1797, 8, 8) float64, 0..16 -> [0, 1]
        url, labels=digits.target, name=name, source="sklearn.datasets.load_digits", overwrite=overwrite,
    )


# -- sources -----------------------------------------------------------------------------------


def _refuse_existing(url: str, overwrite: bool) -> None:
    if fs.exists(url) and not overwrite:
        raise IngestError(f"'{url}' already exists; pass --overwrite to replace it")


def _load_npy(url: str) -> np.ndarray:
    """The array in ``url``; memory-mapped when local, so it may be larger than memory."""
    fsys, path = fs.get_fs(url)
    protocols = (fsys.protocol,) if isinstance(fsys.protocol, str) else tuple(fsys.protocol)
    try:
        if "file" in protocols or "local" in protocols:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(io.BytesIO(fs.read_bytes(url)), allow_pickle=False)
    except ValueError as exc:
        raise IngestError(f"'{url}': cannot read the array ({exc}); object arrays are not accepted") from exc
    except Exception as exc:
        raise IngestError(f"'{url}' is not a readable .npy file ({type(exc).__name__}: {exc})") from exc


def _load_npz(url: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(fs.read_bytes(url)), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise IngestError(f"'{url}': cannot read its arrays ({exc}); object arrays are not accepted") from exc
    except Exception as exc:
        raise IngestError(f"'{url}' is not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def _load_labels_file(url: str) -> np.ndarray:
    if str(url).endswith(".npz"):
        arrays = _load_npz(url)
        for key in LABEL_KEYS:
            if key in arrays:
                return arrays[key]
        raise IngestError(f"'{url}' has no labels (looked for {', '.join(LABEL_KEYS)}; found {', '.join(sorted(arrays)) or 'none'})")
    return np.asarray(_load_npy(url))


def _npz_images(url: str) -> tuple[_Images, np.ndarray | None]:
    arrays = _load_npz(url)
    image_key = next((k for k in IMAGE_KEYS if k in arrays), None)
    if image_key is None:
        raise IngestError(
            f"'{url}' has no images (looked for {', '.join(IMAGE_KEYS)}; found {', '.join(sorted(arrays)) or 'none'})"
        )
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    return _array_images(arrays[image_key], f"{url}:{image_key}"), arrays[label_key] if label_key else None


def _array_images(array: np.ndarray, where: str) -> _Images:
    if array.ndim < 1:
        raise IngestError(f"'{where}' holds a scalar, not images")

    def blocks(rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, array.shape[0], rows):
            yield start, np.asarray(array[start : start + rows])

    return _Images(array.shape[0], tuple(array.shape[1:]), array.dtype, blocks, where)


def _folder_images(url: str) -> _Images:
    names = [n for n in fs.listdir(url) if n.endswith(".npy") and not n.startswith(".")]
    return _sequence_images(len(names), lambda i: _load_npy(fs.join(url, names[i])), lambda i: names[i], url)


def _sequence_images(
    count: int, load: Callable[[int], np.ndarray], label_of: Callable[[int], str], where: str
) -> _Images:
    """Images given one at a time (files, a list): each must match the first in shape and dtype."""
    if count == 0:
        return _Images(0, (), np.dtype("uint8"), lambda rows: iter(()), where)
    first = load(0)

    def blocks(rows: int) -> Iterator[tuple[int, np.ndarray]]:
        batch: list[np.ndarray] = []
        for i in range(count):
            image = first if i == 0 else load(i)
            named = f" ('{label_of(i)}')" if label_of(i) else ""
            if image.shape != first.shape:
                raise IngestError(
                    f"{where}: image {i}{named} has shape {tuple(image.shape)} but image 0 has shape "
                    f"{tuple(first.shape)}; all images must share one shape (resize or crop them first)"
                )
            if image.dtype != first.dtype:
                raise IngestError(
                    f"{where}: image {i}{named} is {image.dtype} but image 0 is {first.dtype}; "
                    "all images must share one dtype (their value ranges differ)"
                )
            batch.append(image)
            if len(batch) == rows:
                yield i + 1 - len(batch), np.stack(batch)
                batch = []
        if batch:
            yield count - len(batch), np.stack(batch)

    return _Images(count, tuple(first.shape), first.dtype, blocks, where)


# -- checks and conversion ----------------------------------------------------------------------


def resolve_layout(shape: tuple[int, ...], layout: str | None, where: str) -> tuple[str, tuple[int, int, int]]:
    """(layout, (C, H, W)) of images whose single-image shape is ``shape``."""
    if layout is not None and layout not in LAYOUTS:
        raise IngestError(f"layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    if len(shape) == 2:
        chw = (1, shape[0], shape[1])
        resolved = "nhw"
    elif len(shape) == 3:
        a, _, c = shape
        if layout is None:
            if a in CHANNEL_COUNTS:
                layout = "nchw"
                if c in CHANNEL_COUNTS and a != c:
                    log.warning(
                        "%s: images of shape %s could be NCHW or NHWC; reading them as NCHW (pass layout='nhwc' otherwise)",
                        where, shape,
                    )
            elif c in CHANNEL_COUNTS:
                layout = "nhwc"
            else:
                raise IngestError(
                    f"{where}: cannot tell the channel axis of images shaped {shape}: neither the first nor the "
                    f"last axis has {', '.join(map(str, CHANNEL_COUNTS))} entries; pass layout='nchw' or 'nhwc'"
                )
        chw = shape if layout == "nchw" else (shape[2], shape[0], shape[1])
        resolved = layout
    else:
        raise IngestError(
            f"{where}: images must be N x C x H x W, N x H x W x C or N x H x W; got {len(shape) + 1}-D images of "
            f"shape (N, {', '.join(map(str, shape))})"
        )
    if min(chw) < 1:
        raise IngestError(f"{where}: images of shape {shape} hold no pixels")
    return resolved, (int(chw[0]), int(chw[1]), int(chw[2]))


def check_labels(labels: Any, count: int, where: str) -> np.ndarray:
    """Labels as int64 class ids >= 0, one per image."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise IngestError(f"{where}: labels must be a 1-D array of class ids, got shape {labels.shape}")
    if len(labels) != count:
        raise IngestError(f"{where}: {len(labels)} labels for {count} images; there must be exactly one per image")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(bad):
            raise IngestError(
                f"{where}: label {bad[0]} is {labels[bad[0]]}, not an integer; labels must be integer class ids"
            )
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise IngestError(f"{where}: labels must be integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        i = int(negative[0])
        raise IngestError(f"{where}: label {i} is {labels[i]}; class ids must be >= 0")
    return labels


def _value_range(dtype: np.dtype, value_range: tuple[float, float] | None, where: str) -> tuple[float, float]:
    if dtype.name not in ACCEPTED_DTYPES:
        raise IngestError(
            f"{where}: images of dtype {dtype} are not supported; accepted: {', '.join(ACCEPTED_DTYPES)} "
            "(integer images of 0..255 can be cast to uint8)"
        )
    if dtype == np.uint8:
        if value_range is not None and tuple(value_range) != (0, 255):
            raise IngestError(f"{where}: uint8 images are always 0..255; value_range={tuple(value_range)} applies to float images only")
        return 0.0, 255.0
    lo, hi = (0.0, 1.0) if value_range is None else (float(value_range[0]), float(value_range[1]))
    if (lo, hi) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise IngestError(f"value_range must be (0, 1) or (-1, 1), got {tuple(value_range or ())}")
    return lo, hi


def to_model_range(block: np.ndarray, value_range: tuple[float, float], start: int, where: str) -> np.ndarray:
    """A raw block of images, checked, as float32 in [-1, 1]; ``start`` is the index of its
    first image (for messages)."""
    lo, hi = value_range
    if block.dtype == np.uint8:
        return block.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    flat = block.reshape(len(block), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise IngestError(f"{where}: image {start + int(np.argmin(finite))} holds NaN or infinite values")
    mins, maxs = flat.min(axis=1), flat.max(axis=1)
    slack = _RANGE_SLACK * (hi - lo)
    outside = np.flatnonzero((mins < lo - slack) | (maxs > hi + slack))
    if len(outside):
        i = int(outside[0])
        hint = " (pass value_range=(-1, 1), or --value-range=-1,1, for images in [-1, 1])" if (lo, hi) == (0.0, 1.0) else ""
        raise IngestError(
            f"{where}: image {start + i} has values in [{float(mins[i]):.6g}, {float(maxs[i]):.6g}], outside the "
            f"declared range [{lo:g}, {hi:g}]{hint}"
        )
    work = np.float64 if block.dtype == np.float64 else np.float32
    scaled = (block.astype(work) - work(lo)) * work(2.0 / (hi - lo)) - work(1.0)
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


# -- writing ----------------------------------------------------------------------------------


def _write(
    images: _Images,
    url: str,
    *,
    labels: Any,
    layout: str | None,
    value_range: tuple[float, float] | None,
    name: str,
    source: str,
    overwrite: bool,
    progress: bool,
) -> DatasetMeta:
    where = images.where
    if images.count == 0:
        raise IngestError(f"{where}: no images found; an image store needs at least one")
    resolved, chw = resolve_layout(images.shape, layout, where)
    value_lo_hi = _value_range(images.dtype, value_range, where)
    label_ids = check_labels(labels, images.count, where) if labels is not None else None
    rows = 4 * default_chunk_rows(4 * chw[0] * chw[1] * chw[2])  # float32 rows; several chunks per block
    # The writer counts rows as "nodes"; for an image store that is the number of images.
    with DatasetWriter(url, name, num_nodes=images.count, overwrite=overwrite, source=source) as writer:
        data = writer.appender(IMAGES, np.float32, chw)
        bar = tqdm(total=images.count, desc="images", unit="img", disable=not progress)
        for start, raw in images.blocks(rows):
            if resolved == "nhwc":
                raw = np.moveaxis(raw, -1, 1)
            elif resolved == "nhw":
                raw = raw[:, None]
            data.append(np.ascontiguousarray(to_model_range(raw, value_lo_hi, start, where)))
            bar.update(len(raw))
        bar.close()
        if data.rows != images.count:
            raise IngestError(f"{where}: expected {images.count} images, read {data.rows}")
        if label_ids is not None:
            writer.write(IMAGE_LABEL, label_ids)
        return writer.commit(**image_meta(images.count, chw, label_ids, layout=resolved, dtype=images.dtype, value_range=value_lo_hi))


def image_meta(
    count: int,
    chw: tuple[int, int, int],
    labels: np.ndarray | None,
    *,
    layout: str,
    dtype: np.dtype | str,
    value_range: tuple[float, float],
) -> dict[str, Any]:
    """What an image store's marker records besides its arrays."""
    return {
        "num_classes": int(labels.max()) + 1 if labels is not None and len(labels) else 0,
        "kind": "images",
        "num_images": int(count),
        "image_shape": [int(v) for v in chw],
        "input_layout": layout,
        "input_dtype": str(np.dtype(dtype)),
        "input_range": [float(v) for v in value_range],
    }
