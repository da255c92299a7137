"""`strata info`: what a store holds, and whether it is intact."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import StoreError

if TYPE_CHECKING:
    from strata.storage.store import DatasetStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print what a dataset store holds; --verify re-checks its checksums",
        description="Print counts, dtypes, sizes and degree statistics of a dataset store.",
    )
    p.add_argument("store", help="URL of the store")
    p.add_argument("--verify", action="store_true", help="re-read every array and compare its checksum (exit 1 on mismatch)")
    p.set_defaults(func=run)


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes} B"


def _describe_images(store: DatasetStore) -> None:
    from strata.storage import fs, layout

    info = store.meta.arrays[layout.IMAGES]
    n, c, h, w = info["shape"]
    print(f"images   {n:,} of {c} x {h} x {w} (C x H x W), float32 in [-1, 1]")
    if store.has(layout.IMAGE_LABEL):
        counts = np.bincount(store.read(layout.IMAGE_LABEL), minlength=store.meta.num_classes)
        print(f"classes  {store.meta.num_classes}   images per class: min {counts.min():,} / max {counts.max():,}")
    else:
        print("classes  none (unlabelled)")
    extra = store.meta.extra
    if "input_dtype" in extra:
        lo, hi = extra.get("input_range", [0, 0])
        print(f"input    {extra['input_dtype']} {extra.get('input_layout', '?')} in [{lo:g}, {hi:g}]")
    cache = fs.join(store.url, layout.QUALITY_CLASSIFIER, "info.json")
    if fs.exists(cache):
        try:
            accuracy = json.loads(fs.read_text(cache))["heldout_accuracy"]
            print(f"quality  reference classifier cached, held-out accuracy {accuracy:.3f}")
        except (ValueError, KeyError, TypeError):
            print(f"quality  reference classifier cache at {cache} is unreadable")


def run(args: argparse.Namespace) -> int:
    from strata.storage import layout
    from strata.storage.store import DatasetStore

    store = DatasetStore.open(args.store)
    meta = store.meta
    print(f"store    {store.url}")
    print(f"name     {meta.name}   (schema v{meta.schema_version}, source {meta.source or '-'})")
    if store.has(layout.IMAGES):
        _describe_images(store)
    else:
        print(f"nodes    {meta.num_nodes:,}")
        print(f"edges    {meta.num_edges:,}")
        print(f"features {meta.feat_dim}   classes {meta.num_classes}")
    for split in layout.SPLITS:
        key = layout.split_key(split)
        if store.has(key):
            print(f"{split:<8} {meta.arrays[key]['shape'][0]:,} nodes")
    print("arrays:")
    for key, info in meta.arrays.items():
        logical = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize
        print(f"  {key:<22} {info['dtype']:<8} {str(tuple(info['shape'])):<18} {_human(logical)}")
    if store.has(layout.INDPTR):
        degrees = np.diff(store.read(layout.INDPTR))
        print(
            f"in-degree: min {degrees.min()} / median {np.median(degrees):.0f} / mean {degrees.mean():.2f} / "
            f"max {degrees.max()} / isolated {int((degrees == 0).sum()):,}"
        )
    if args.verify:
        problems = store.verify()
        if problems:
            for problem in problems:
                print(f"VERIFY FAILED: {problem}")
            raise StoreError(f"store '{store.url}' failed verification ({len(problems)} problem(s)); re-ingest it")
        print(f"verify   ok: {len(meta.arrays)} arrays match their checksums")
    return 0
