"""`strata info`: what a store holds, and whether it is intact."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import numpy as np

from strata.errors import StoreError

if TYPE_CHECKING:
    from strata.storage.store import DatasetStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print what a dataset store holds, with its partitions and packs; --verify re-checks its checksums",
        description="Print counts, dtypes, sizes and degree statistics of a dataset store, the partitions "
        "'strata partition' wrote into it and the packs 'strata pack' wrote under STORE/packs/. "
        "Opening a store always checks it against its marker (shapes, dtypes, every chunk present) and "
        "bounds-checks its graph, labels and splits once per content. "
        "Exit status: 0 when all is well, 1 when the store is corrupt (those checks fail, or --verify finds an "
        "array that does not match its checksum), 2 on any other error (no store at STORE, a store that was not "
        "fully written, ...).",
    )
    p.add_argument("store", help="URL of the store")
    p.add_argument(
        "--verify", action="store_true",
        help="also re-read every array and compare its checksum and dtype (exit 1 when one does not match)",
    )
    p.set_defaults(func=run)


VERIFY_FAILED = 1
"""The exit status of a store that --verify found damaged (other errors exit 2)."""


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


def open_store(url: str) -> DatasetStore:
    """The store at ``url``, or an error saying what is there instead: nothing, a file, or a
    folder that is no store at all (not one that was "not fully written")."""
    from strata.storage import fs, layout
    from strata.storage.store import DatasetStore

    url = str(url).rstrip("/") or "/"
    if fs.exists(url) and not fs.exists(fs.join(url, layout.MARKER)):
        if not fs.isdir(url):
            raise StoreError(f"'{url}' is a file, not a dataset store (a folder written by 'strata ingest')")
        if not fs.exists(fs.join(url, "zarr.json")):
            entries = fs.listdir(url)
            stores = [name for name in entries if fs.exists(fs.join(url, name, layout.MARKER))]
            if stores:
                hint = f"it holds the store(s) {', '.join(stores)}: run 'strata info {fs.join(url, stores[0])}'"
            elif "checkpoints" in entries or "metrics.jsonl" in entries:
                hint = "it looks like a run directory of 'strata train'; its config's data.store names the store"
            else:
                hint = f"it holds {', '.join(entries[:8]) + (', ...' if len(entries) > 8 else '') or 'nothing'}"
            raise StoreError(
                f"'{url}' is not a dataset store (no {layout.MARKER} marker and no zarr data); {hint}. "
                "A store is a folder written by 'strata ingest'"
            )
    return DatasetStore.open(url)


def _describe_partitions(store: DatasetStore) -> None:
    from strata.errors import PartitionError
    from strata.partitioners.format import list_partitions, open_partition

    names = list_partitions(store.url)
    if not names:
        print("partitions none (write one with 'strata partition')")
        return
    print("partitions:")
    for name in names:
        try:
            info = open_partition(store, name).info
            print(f"  {name:<20} {info.method}, {info.num_parts} parts, halo {info.halo_hops} hop(s)")
        except PartitionError as exc:
            print(f"  {name:<20} unusable: {exc}")


def _describe_packs(store: DatasetStore) -> None:
    from strata.errors import PackError
    from strata.storage import fs
    from strata.storage.featstore.format import MANIFEST, PACK_MARKER, PackManifest

    root = fs.join(store.url, "packs")
    names = [name for name in fs.listdir(root) if not name.startswith(".") and fs.exists(fs.join(root, name, MANIFEST))]
    if not names:
        print("packs    none under STORE/packs (write one with 'strata pack')")
        return
    print("packs:")
    for name in names:
        url = fs.join(root, name)
        try:
            manifest = PackManifest.from_json(fs.read_text(fs.join(url, MANIFEST)), url)
        except PackError as exc:
            print(f"  {name:<20} unusable: {exc}")
            continue
        fields = manifest.fields
        state = "complete" if fs.exists(fs.join(url, PACK_MARKER)) else "incomplete (re-run the same 'strata pack' to finish it)"
        shown = {key: fields.get(key) for key in ("fanouts", "batch_size", "seed", "partition", "part")}
        what = ", ".join(
            f"{key} {','.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in shown.items() if value not in (None, "", -1)
        )
        print(f"  {name:<20} {manifest.epochs} epoch(s) x {manifest.steps_per_epoch} steps; {what}; {state}")


def _failed(url: str, problems: list[str]) -> int:
    for problem in problems:
        print(f"VERIFY FAILED: {problem}")
    print(f"strata: error: store '{url}' failed verification ({len(problems)} problem(s)); re-ingest it", file=sys.stderr)
    return VERIFY_FAILED


def run(args: argparse.Namespace) -> int:
    from strata.storage import layout
    from strata.storage.verify import CorruptStore

    try:
        store = open_store(args.store)
    except CorruptStore as exc:
        return _failed(args.store, [str(exc)])
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
    if store.has(layout.INDPTR):
        _describe_partitions(store)
        _describe_packs(store)
    if args.verify:
        problems = store.verify()
        if problems:
            return _failed(store.url, problems)
        print(f"verify   ok: {len(meta.arrays)} arrays match their checksums, every chunk its crc32c")
    return 0
