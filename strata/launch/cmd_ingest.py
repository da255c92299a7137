"""`strata ingest`: raw data -> a dataset store."""

from __future__ import annotations

import argparse

from strata.errors import IngestError

FORMATS = {
    "planetoid": "a folder of Planetoid ind.<name>.* files (Cora, CiteSeer, PubMed)",
    "ogb": "an OGB node-property folder (raw/*.csv.gz, split/<scheme>/*.csv.gz)",
    "npz": "an .npz file or a folder of .npy files (edge_index, features, labels, splits)",
    "synthetic": "a generated block-model or R-MAT graph (SOURCE is ignored; see --nodes etc.)",
}


def register(sub: argparse._SubParsersAction) -> None:
    epilog = "formats:\n" + "\n".join(f"  {name:<10} {text}" for name, text in FORMATS.items())
    p = sub.add_parser(
        "ingest",
        help="turn raw graph data into a dataset store",
        description="Read raw graph data and write it as a checksummed zarr dataset store. The store "
        "appears at --out only once it is complete; a failed ingest leaves nothing there.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=sorted(FORMATS), help="input format")
    p.add_argument("source", nargs="?", default="", help="input path or URL (not needed for synthetic)")
    p.add_argument("--out", required=True, help="URL of the store to write (path, file://, memory://, s3://...)")
    p.add_argument("--name", default="", help="data set name recorded in the store (default: from the source)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--allow-nan", action="store_true", help="accept NaN/inf features instead of failing")
    p.add_argument("--no-symmetrize", action="store_true", help="keep edges directed (default: add reverse edges)")
    p.add_argument("--planetoid-name", default="", help="planetoid: file prefix (default: --name, else cora)")
    p.add_argument("--split-scheme", default=None, help="ogb: which split/<scheme> to use (default: the first)")
    g = p.add_argument_group("synthetic")
    g.add_argument("--nodes", type=int, default=20_000, help="number of nodes (default 20000)")
    g.add_argument("--avg-degree", type=float, default=10.0, help="mean in-degree (default 10)")
    g.add_argument("--classes", type=int, default=8, help="number of classes (default 8)")
    g.add_argument("--feat-dim", type=int, default=64, help="feature width (default 64)")
    g.add_argument("--kind", choices=["block", "rmat"], default="block", help="source distribution (default block)")
    g.add_argument("--homophily", type=float, default=0.8, help="share of same-class in-edges (default 0.8)")
    g.add_argument("--feature-noise", type=float, default=3.0, help="noise around class centroids (default 3.0)")
    g.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.launch.cli import show_progress
    from strata.storage.ingest import ingest

    if args.format != "synthetic" and not args.source:
        raise IngestError(f"'strata ingest {args.format}' needs a SOURCE path")
    meta = ingest(
        args.format,
        args.source,
        args.out,
        name=args.name,
        overwrite=args.overwrite,
        allow_nan=args.allow_nan,
        symmetrize=not args.no_symmetrize,
        planetoid_name=args.planetoid_name,
        split_scheme=args.split_scheme,
        synthetic={
            "num_nodes": args.nodes,
            "avg_degree": args.avg_degree,
            "num_classes": args.classes,
            "feat_dim": args.feat_dim,
            "kind": args.kind,
            "homophily": args.homophily,
            "feature_noise": args.feature_noise,
            "seed": args.seed,
        },
        progress=show_progress(args),
    )
    print(
        f"wrote {args.out}: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges, "
        f"{meta.feat_dim} features, {meta.num_classes} classes"
    )
    return 0
