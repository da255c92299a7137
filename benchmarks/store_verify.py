"""What verifying a dataset store costs: opening it checked against unchecked, the one-time
bounds checks against reading the arrays, and reading through zarr's crc32c codec against the
same arrays without it.

It writes a synthetic store (``strata ingest synthetic`` in-process) and a copy of it whose
arrays lack the crc32c codec (the baseline for reads), then times, interleaved and repeated
(median): ``DatasetStore.open(url, check=False)`` (the marker and zarr group only), the checked
open that every training does (structure, chunk listing, and the cached bounds checks), the
bounds checks themselves (what the first open of a new content pays, here with the cache off),
and reading the graph, features, labels and splits from either copy.

    python benchmarks/store_verify.py [--nodes 200000] [--repeats 5] [--json OUT]

Methods: ``unchecked`` and ``checked`` (the crc32c store) and ``no_crc`` (the copy); ratios
``checked_over_unchecked_open``, ``bounds_checks_over_full_read_seconds`` (the bounds checks
against a plain read of everything) and ``crc_over_no_crc_read``. Smallest useful run,
a few seconds::

    python benchmarks/store_verify.py --nodes 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from report import add_json_flag, publish, ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=200_000)
    p.add_argument("--avg-degree", type=int, default=10)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    add_json_flag(p)
    return p.parse_args(argv)


def _copy_without_crc(src: str, dst: str) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    from strata.storage import fs
    from strata.storage.store import DatasetStore

    store = DatasetStore.open(src, check=False)
    fs.remove(dst)
    group = zarr.open_group(dst, mode="w")
    for key, info in store.meta.arrays.items():
        array = group.create_array(key, shape=tuple(info["shape"]), chunks=(info["chunk_rows"],) + tuple(info["shape"][1:]),
                                   dtype=info["dtype"], compressors=[ZstdCodec(level=0, checksum=False)])
        for start, block in store.iter_blocks(key):
            array[start : start + len(block)] = block
    Path(dst, "_STRATA_COMPLETE").write_text(store.meta.to_json())


def _read_all(url: str) -> None:
    from strata.storage.store import DatasetStore

    store = DatasetStore.open(url, check=False)
    store.csc(), store.features(), store.labels(), [store.split(s) for s in ("train", "valid", "test")]


def _time(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():  # interleaved: every method sees the same load
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from strata.storage import verify
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
    from strata.storage.store import DatasetStore

    with tempfile.TemporaryDirectory(prefix="strata-verify-") as tmp:
        url, plain = f"{tmp}/store", f"{tmp}/no-crc"
        cfg = SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=args.avg_degree, feat_dim=args.feat_dim, seed=1)
        meta = write_synthetic(cfg, url, progress=False)
        _copy_without_crc(url, plain)

        def first_open() -> None:
            store = DatasetStore.open(url, check=False)
            verify.check_content(store, verify.check_structure(url, store.meta, store.group), cache=False)

        t = _time({
            "open_unchecked": lambda: DatasetStore.open(url, check=False),
            "open_checked": lambda: DatasetStore.open(url),
            "first_open_checks": first_open,
            "read_crc": lambda: _read_all(url),
            "read_no_crc": lambda: _read_all(plain),
        }, args.repeats)
    for name, value in t.items():
        print(f"{name:<20} {value * 1e3:9.1f} ms")
    methods = {
        "unchecked": {"open_seconds": t["open_unchecked"], "read_seconds": t["read_crc"]},
        "checked": {"open_seconds": t["open_checked"], "first_open_check_seconds": t["first_open_checks"], "read_seconds": t["read_crc"]},
        "no_crc": {"read_seconds": t["read_no_crc"]},
    }
    ratios = {
        "checked_over_unchecked_open": ratio(t["open_checked"], t["open_unchecked"]),
        "bounds_checks_over_full_read_seconds": ratio(t["first_open_checks"], t["read_crc"]),
        "crc_over_no_crc_read": ratio(t["read_crc"], t["read_no_crc"]),
    }
    context = {"num_nodes": meta.num_nodes, "num_edges": meta.num_edges, "feat_dim": meta.feat_dim}
    publish(args, "store_verify", methods, ratios, context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
