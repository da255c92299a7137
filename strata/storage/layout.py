"""The on-disk dataset format, schema version 2.

A dataset store is a zarr v3 group at any fsspec URL::

    STORE/
      zarr.json                 root group; attribute "strata" mirrors the completion marker
      _STRATA_COMPLETE          JSON written last: schema version, counts, dtypes, checksums.
                                A store without it was not fully written and is never read.
      _STRATA_CHECKED           the result of the bounds checks (strata.storage.verify), keyed by
                                the chunk files they read; absent or stale means "check again"
      graph/indptr              int64 (N+1,)   CSC: in-edges of node v are indices[indptr[v]:indptr[v+1]]
      graph/indices             int64 (E,)     source node of each edge, grouped by destination
      node/feat                 float32 (N, F) row-chunked
      node/label                int64 (N,)     class id, -1 where unknown
      node/split/train          int64 (n_train,) node ids
      node/split/valid          int64 (n_valid,)
      node/split/test           int64 (n_test,)
      edge/<name>               optional per-edge arrays, in CSC edge order
      images/data               float32 (N, C, H, W) image data sets (diffusion), values in [-1, 1],
                                chunked by rows of whole images
      images/label              int64 (N,)     class id >= 0; absent when the images are unlabelled
      quality/classifier/       the cached reference classifier of an image store, written by
        weights.pt              strata.runtime.diffusion.quality after the store is complete (torch state dict)
        info.json               its held-out accuracy and a fingerprint of the data it learnt from
      partitions/<name>/        written by strata partition, with their own marker

An image store's marker counts images in ``num_nodes`` (the writer's row count) and adds
``num_classes`` (0 when unlabelled) and, under ``extra``: ``kind: "images"``, ``num_images``,
``image_shape`` [C, H, W] and how the input was read (``input_layout``, ``input_dtype``,
``input_range``).

Checksums are BLAKE2b-128 over each array's logical little-endian bytes in row order, so
they do not depend on chunking or compression; ``strata info --verify`` re-hashes them.

Since schema version 2 every chunk is written (even one of zeros), ends in zarr v3's
``crc32c`` codec, and the marker records each array's rows per chunk (``chunk_rows``), so a
reader knows which chunks must exist and verifies each one as it decodes it. Version 1 stores
lack both and are refused with a message to re-ingest them.
"""

SCHEMA_VERSION = 2
FIRST_CHECKSUMMED_SCHEMA = 2
MARKER = "_STRATA_COMPLETE"
CHECKED = "_STRATA_CHECKED"

INDPTR = "graph/indptr"
INDICES = "graph/indices"
FEAT = "node/feat"
LABEL = "node/label"
SPLITS = ("train", "valid", "test")
IMAGES = "images/data"
IMAGE_LABEL = "images/label"
QUALITY_CLASSIFIER = "quality/classifier"


def split_key(name: str) -> str:
    return f"node/split/{name}"


def default_chunk_rows(row_bytes: int, target_bytes: int = 4 << 20) -> int:
    """Rows per chunk so one chunk holds about ``target_bytes``."""
    return max(1, target_bytes // max(1, row_bytes))
