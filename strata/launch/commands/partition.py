"""`strata partition`: cut a store's graph into parts with halos and report the quality."""

from __future__ import annotations

import argparse

from strata.launch.commands.pack import parse_size

EPILOG = """\
methods:
  metis    DGL's METIS: best cuts; needs the graph in memory (about 152 bytes per node and
           edge: refused up front, with the estimate, where that exceeds the memory available
           or --memory-limit); balances nodes, in-edges and training nodes
  fennel   streaming Fennel with growth and restreaming: memory O(N + chunk), for graphs
           whose edges do not fit in memory
  ldg      one-pass streaming LDG (a baseline)
  random   balanced random assignment (a baseline)
  range    contiguous id ranges

The partition is written to STORE/partitions/NAME/ (one folder per part: owned nodes, halo,
local CSC, id maps, boundary flags) with report.json beside the parts. It appears there only
once complete. Halo = nodes owned elsewhere within --halo hops upstream (in-neighbours) of
owned nodes: use the number of GNN layers for full-graph training, 1 for sampling.

example:
  strata partition stores/cora --method metis --parts 4 --halo 2
"""


def register(sub: argparse._SubParsersAction) -> None:
    from strata.partitioners.config import METHODS

    p = sub.add_parser(
        "partition",
        help="cut a store's graph into parts with k-hop halos and print a quality report",
        description="Assign every node of a dataset store to a part, build each part's local graph with "
        "its halo, write them under the store's partitions/ folder and print the quality report "
        "(edge cut, communication volume, replication factor, balance, time, peak memory).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="URL of the dataset store (path, file://, memory://, s3://...)")
    p.add_argument("--method", choices=METHODS, default="metis", help="partitioner (default metis)")
    p.add_argument("--parts", type=int, default=4, help="number of parts (default 4)")
    p.add_argument("--halo", type=int, default=1, help="halo hops, at least 1 (default 1)")
    p.add_argument("--name", default="", help="partition name (default METHOD-PARTS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing partition of that name")
    p.add_argument("--seed", type=int, default=0, help="seed of random and of streaming tie-breaks (default 0)")
    s = p.add_argument_group("streaming (fennel, ldg)")
    s.add_argument(
        "--passes", type=int, default=0,
        help="passes over the edges, at most (default: ldg 1, fennel 10; fennel stops early once nodes stop moving)",
    )
    s.add_argument("--slack", type=float, default=0.05, help="parts hold at most (1+SLACK)*N/PARTS nodes (default 0.05)")
    s.add_argument("--no-grow", action="store_true", help="fennel: skip the growth passes from seed nodes")
    s.add_argument("--chunk-edges", type=int, default=1 << 20, help="edges read per chunk (default 1048576)")
    p.add_argument(
        "--memory-limit", type=parse_size, default=0, metavar="BYTES",
        help="metis: refuse graphs estimated to need more than this, e.g. 8GiB (default: the memory available)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.launch.progress import show_progress
    from strata.partitioners.build import partition_store
    from strata.partitioners.config import PartitionConfig

    cfg = PartitionConfig(
        method=args.method,
        num_parts=args.parts,
        halo_hops=args.halo,
        seed=args.seed,
        passes=args.passes,
        balance_slack=args.slack,
        grow=not args.no_grow,
        chunk_edges=args.chunk_edges,
        memory_limit_bytes=args.memory_limit,
        name=args.name,
        overwrite=args.overwrite,
    )
    report = partition_store(args.store, cfg, progress=show_progress(args))
    print(report.to_json() if args.json else report.format())
    return 0
