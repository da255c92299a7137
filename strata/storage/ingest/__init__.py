"""Readers that turn raw data into dataset stores; ``ingest`` dispatches by format name."""

from __future__ import annotations

import posixpath
from typing import Any

from strata.errors import IngestError
from strata.storage import fs
from strata.storage.store import DatasetMeta


def ingest(
    fmt: str,
    source: str,
    out: str,
    *,
    name: str = "",
    overwrite: bool = False,
    allow_nan: bool = False,
    symmetrize: bool = True,
    planetoid_name: str = "",
    split_scheme: str | None = None,
    synthetic: dict[str, Any] | None = None,
    progress: bool = False,
) -> DatasetMeta:
    """Read ``source`` in format ``fmt`` and write a complete store at ``out``."""
    from strata.storage.ingest.common import write_graph_data

    if fmt != "synthetic" and not fs.exists(source):
        raise IngestError(f"input '{source}' does not exist")
    if fs.exists(out) and not overwrite:
        raise IngestError(f"'{out}' already exists; pass --overwrite to replace it")
    if fmt == "planetoid":
        from strata.storage.ingest.planetoid import planetoid_prefix, read_planetoid

        prefix = planetoid_prefix(source, planetoid_name or name)
        data = read_planetoid(source, prefix)
        return write_graph_data(
            data, out, name or prefix, symmetrize=symmetrize, overwrite=overwrite, allow_nan=allow_nan, source=source
        )
    name = name or posixpath.basename(str(source).rstrip("/")).split(".")[0] or fmt
    if fmt == "npz":
        from strata.storage.ingest.arrays import read_arrays

        data = read_arrays(source)
        return write_graph_data(data, out, name, symmetrize=symmetrize, overwrite=overwrite, allow_nan=allow_nan, source=source)
    if fmt == "ogb":
        from strata.storage.ingest.ogb import ingest_ogb

        return ingest_ogb(source, out, name, scheme=split_scheme, symmetrize=symmetrize, overwrite=overwrite, allow_nan=allow_nan)
    if fmt == "synthetic":
        from strata.storage.ingest.synthetic import (
            SyntheticGraphConfig,
            write_synthetic,
        )

        cfg = SyntheticGraphConfig(**(synthetic or {}))
        return write_synthetic(cfg, out, name, overwrite=overwrite, progress=progress)
    raise IngestError(f"unknown ingest format '{fmt}' (known: npz, ogb, planetoid, synthetic)")
