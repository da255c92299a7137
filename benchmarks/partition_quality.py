"""Partition quality and streaming memory, measured against baselines in the same run.

1. memory: fennel on a synthetic power-law (R-MAT) graph of 1M nodes and ~10M edges, in a
   subprocess that opens the store and reads its row pointer, records its resident memory
   (the baseline), assigns, and records the peak RSS; peak - baseline is what fennel adds
   over the store reader.
2. quality: edge cut of metis, fennel, ldg, random and range on Cora and on 100k-node
   synthetic graphs (block model and R-MAT), with the ratios fennel/metis and random/fennel
   and the targets metis <= fennel <= random, fennel <= 1.5 x metis.

    python benchmarks/partition_quality.py [--parts 4] [--workdir DIR] [--planetoid DIR] [--json OUT]

Stores are generated under --workdir (a temporary folder by default); Cora is read from
--planetoid (default: the shared data folder beside the repository) and skipped, saying
so, when absent.

With ``--json`` it also writes each method's figures by graph (``methods["fennel"]["cora"]``;
the memory measurement under the graph ``big``), the graphs and the targets' verdicts under
``context``, and the ratios ``fennel_over_metis_cut_<graph>``, ``random_over_fennel_cut_<graph>``
and, with --big-metis, ``metis_over_fennel_added_memory_big``; see benchmarks/report.py. The
smallest useful run, half a minute on 2 cores::

    python benchmarks/partition_quality.py --big-nodes 20000 --big-metis --mid-nodes 3000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_json_flag, publish, ratio

REPO = Path(__file__).resolve().parents[1]
METHODS = ("metis", "fennel", "ldg", "random", "range")
GIB = 1 << 30


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _current_rss() -> int:
    """Resident memory now (Linux /proc); the peak so far where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_rss()


def measure_child(url: str, method: str, parts: int) -> None:
    """Run in a fresh process: open the store, note peak RSS, assign, note it again; print JSON."""
    import numpy as np

    from strata.partitioners.assign import assign
    from strata.partitioners.graph import StoreGraph
    from strata.partitioners.report import edge_cut
    from strata.storage.store import DatasetStore

    graph = StoreGraph(DatasetStore.open(url))
    graph.indptr()  # the O(N) row pointer belongs to the reader's baseline
    baseline = _current_rss()
    baseline_peak = _peak_rss()
    started = time.perf_counter()
    parts_of = assign(graph, parts, method=method)
    seconds = time.perf_counter() - started
    peak = _peak_rss()
    cut = edge_cut(graph, parts_of)
    sizes = np.bincount(parts_of, minlength=parts)
    print(
        json.dumps(
            {
                "method": method,
                "num_nodes": graph.num_nodes,
                "num_edges": graph.num_edges,
                "baseline_rss": baseline,
                "baseline_peak_rss": baseline_peak,
                "peak_rss": peak,
                "delta_rss": peak - baseline,
                "seconds": seconds,
                "edge_cut": cut,
                "edge_cut_fraction": cut / graph.num_edges,
                "node_balance": float(sizes.max() / sizes.mean()),
            }
        )
    )


def _child(url: str, method: str, parts: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", url, "--child-method", method, "--parts", str(parts)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _synthetic(workdir: Path, name: str, nodes: int, kind: str, avg_degree: float) -> str:
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    url = str(workdir / name)
    if not (workdir / name / "_STRATA_COMPLETE").exists():
        cfg = SyntheticGraphConfig(num_nodes=nodes, kind=kind, avg_degree=avg_degree, feat_dim=8)
        write_synthetic(cfg, url, name, progress=False, overwrite=True)
    return url


def quality(url: str, parts: int) -> dict[str, dict]:
    import numpy as np

    from strata.partitioners.assign import assign
    from strata.partitioners.graph import as_graph
    from strata.partitioners.report import edge_cut

    graph = as_graph(url)
    rows = {}
    for method in METHODS:
        started = time.perf_counter()
        parts_of = assign(graph, parts, method=method)
        seconds = time.perf_counter() - started
        cut = edge_cut(graph, parts_of)
        sizes = np.bincount(parts_of, minlength=parts)
        rows[method] = {
            "edge_cut": cut,
            "edge_cut_fraction": cut / max(graph.num_edges, 1),
            "node_balance": float(sizes.max() / sizes.mean()),
            "seconds": seconds,
        }
    return rows


def _print_quality(title: str, rows: dict[str, dict], num_nodes: int, num_edges: int) -> dict:
    print(f"\n{title}: {num_nodes:,} nodes, {num_edges:,} edges")
    print(f"  {'method':<8} {'edge cut':>12} {'fraction':>9} {'balance':>8} {'seconds':>8}")
    for method, row in rows.items():
        print(
            f"  {method:<8} {row['edge_cut']:>12,} {row['edge_cut_fraction']:>9.4f} "
            f"{row['node_balance']:>8.3f} {row['seconds']:>8.2f}"
        )
    metis, fennel, random = (rows[m]["edge_cut"] for m in ("metis", "fennel", "random"))
    verdict = {
        "fennel_over_metis": fennel / max(metis, 1),
        "random_over_fennel": random / max(fennel, 1),
        "ordering_ok": metis <= fennel <= random,
        "fennel_within_1_5x_metis": fennel <= 1.5 * metis,
    }
    print(
        f"  ratios: fennel/metis {verdict['fennel_over_metis']:.3f}, random/fennel {verdict['random_over_fennel']:.2f}; "
        f"metis <= fennel <= random: {'yes' if verdict['ordering_ok'] else 'NO'}; "
        f"fennel <= 1.5x metis: {'yes' if verdict['fennel_within_1_5x_metis'] else 'NO'}"
    )
    return verdict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--workdir", default="", help="where generated stores go (kept between runs; default: a temp folder)")
    p.add_argument("--planetoid", default=str(REPO.parent / "shared" / "data" / "planetoid"))
    p.add_argument("--big-nodes", type=int, default=1_000_000)
    p.add_argument("--big-degree", type=float, default=10.25, help="mean in-degree of the big graph (10.25 gives ~10M edges)")
    p.add_argument("--mid-nodes", type=int, default=100_000)
    p.add_argument("--skip-big", action="store_true", help="skip the 1M-node memory measurement")
    p.add_argument("--big-metis", action="store_true", help="also measure metis on the big graph, for its memory")
    add_json_flag(p)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--child-method", default="fennel", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def memory(args: argparse.Namespace, workdir: Path) -> dict[str, dict]:
    """The big graph's memory measurement: each method's row, in a fresh process."""
    url = _synthetic(workdir, f"rmat-{args.big_nodes}", args.big_nodes, "rmat", args.big_degree)
    methods = ("fennel", "metis") if args.big_metis else ("fennel",)
    print(f"memory: {args.parts} parts of a synthetic R-MAT graph, each method in a fresh process")
    rows = {}
    for method in methods:
        rows[method] = row = _child(url, method, args.parts)
        print(
            f"  {method:<7} {row['num_nodes']:,} nodes, {row['num_edges']:,} edges: peak RSS "
            f"{row['peak_rss'] / GIB:.3f} GiB, after opening the store {row['baseline_rss'] / GIB:.3f} GiB, "
            f"added {row['delta_rss'] / GIB:.3f} GiB (target <= 2 GiB: "
            f"{'yes' if row['delta_rss'] <= 2 * GIB else 'NO'}); {row['seconds']:.1f} s; "
            f"edge cut {row['edge_cut']:,} ({row['edge_cut_fraction']:.4f}); node balance {row['node_balance']:.3f}"
        )
    return rows


def quality_stores(args: argparse.Namespace, workdir: Path) -> dict[str, tuple[str, str]]:
    """(title, store URL) of each graph whose cuts are compared, by its short name."""
    stores = {}
    planetoid = Path(args.planetoid)
    if (planetoid / "ind.cora.x").exists():
        from strata.storage.ingest import ingest

        url = str(workdir / "cora")
        if not (workdir / "cora" / "_STRATA_COMPLETE").exists():
            ingest("planetoid", str(planetoid), url, name="cora", overwrite=True)
        stores["cora"] = ("Cora", url)
    else:
        print(f"\nCora skipped: no Planetoid files at {planetoid} (pass --planetoid DIR)")
    for kind in ("block", "rmat"):
        stores[kind] = (f"synthetic {kind}", _synthetic(workdir, f"{kind}-{args.mid_nodes}", args.mid_nodes, kind, 10.0))
    return stores


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        measure_child(args.child, args.child_method, args.parts)
        return 0
    from strata.storage.store import DatasetStore

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        methods: dict[str, dict[str, dict]] = {}
        graphs: dict[str, dict] = {}
        ratios: dict[str, float | None] = {}
        if not args.skip_big:
            big = memory(args, workdir)
            for method, row in big.items():
                methods.setdefault(method, {})["big"] = row
            fennel = big["fennel"]
            graphs["big"] = {"num_nodes": fennel["num_nodes"], "num_edges": fennel["num_edges"],
                             "fennel_added_within_2_gib": fennel["delta_rss"] <= 2 * GIB}
            if "metis" in big:
                ratios["metis_over_fennel_added_memory_big"] = ratio(big["metis"]["delta_rss"], fennel["delta_rss"])
                ratios["fennel_over_metis_cut_big"] = ratio(fennel["edge_cut"], big["metis"]["edge_cut"])

        for name, (title, url) in quality_stores(args, workdir).items():
            meta = DatasetStore.open(url).meta
            rows = quality(url, args.parts)
            verdict = _print_quality(title, rows, meta.num_nodes, meta.num_edges)
            for method, row in rows.items():
                methods.setdefault(method, {})[name] = row
            graphs[name] = {"num_nodes": meta.num_nodes, "num_edges": meta.num_edges, "ordering_ok": verdict["ordering_ok"],
                            "fennel_within_1_5x_metis": verdict["fennel_within_1_5x_metis"]}
            ratios[f"fennel_over_metis_cut_{name}"] = ratio(rows["fennel"]["edge_cut"], rows["metis"]["edge_cut"])
            ratios[f"random_over_fennel_cut_{name}"] = ratio(rows["random"]["edge_cut"], rows["fennel"]["edge_cut"])
        print()
        publish(args, "partition_quality", methods, ratios, {"graphs": graphs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
