"""`strata ingest FORMAT ...`: raw data -> a dataset store, one sub-command per format."""

from __future__ import annotations

import argparse
import logging
import re
from typing import TYPE_CHECKING

from strata.errors import IngestError

if TYPE_CHECKING:
    from strata.storage.store import DatasetMeta

GRAPH_FORMATS = {
    "planetoid": "a folder of Planetoid ind.<name>.* files (Cora, CiteSeer, PubMed)",
    "ogb": "an OGB node-property folder (raw/*.csv.gz, split/<scheme>/*.csv.gz)",
    "npz": "an .npz file or a folder of .npy files (edge_index, features, labels, splits)",
    "synthetic": "a generated block-model or R-MAT graph (no SOURCE; see --nodes etc.)",
}
IMAGE_FORMATS = {
    "images": "image arrays: an .npy, an .npz or a folder of per-image .npy files",
    "digits": "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no download)",
    "synthetic-images": "generated labelled images of any size (class-dependent patterns)",
}
FORMATS = {**GRAPH_FORMATS, **IMAGE_FORMATS}

log = logging.getLogger(__name__)

_IMAGES_HELP = """\
Images may be N x C x H x W, N x H x W x C (C = 1, 3 or 4; the channel axis is found from
its size, NCHW first when both fit) or N x H x W. uint8 images are read as 0..255, float
images as [0, 1] unless --value-range=-1,1 says they are in [-1, 1]. The store holds float32
images in [-1, 1] under images/data and int64 labels under images/label.

An .npz is searched for images under 'images', 'x' or 'data' and for labels under 'labels',
'label' or 'y'. A folder is read as one image per .npy file, in file-name order.

examples:
  strata ingest images faces.npy --out stores/faces --labels faces_labels.npy
  strata ingest images photos.npz --out stores/photos --layout nhwc
  strata ingest images frames/ --out stores/frames --value-range=-1,1
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="turn raw graph or image data into a dataset store",
        description="Read raw graph or image data and write it as a checksummed zarr dataset store. The "
        "store appears at its URL only once it is complete; a failed ingest leaves nothing there. "
        "'strata ingest FORMAT --help' lists a format's options.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, text in GRAPH_FORMATS.items():
        _register_graph(formats, name, text)
    _register_images(formats)
    _register_digits(formats)
    _register_synthetic_images(formats)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="", help="data set name recorded in the store (default: from the source)")
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing store: the new one is swapped in only once complete (readers see the old or the "
        "new, never none), and an ingest into the same output already running is refused, naming it",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# -- graphs ------------------------------------------------------------------------------------


def _register_graph(formats: argparse._SubParsersAction, name: str, text: str) -> None:
    """One parser per graph format, holding only that format's options."""
    p = formats.add_parser(name, help=text, description=f"Ingest {text}.")
    if name == "synthetic":
        p.set_defaults(source="")
    else:
        p.add_argument("source", help="input path or URL")
    p.add_argument("--out", required=True, metavar="STORE", help="URL of the store to write (path, file://, memory://, s3://...)")
    _common(p)
    p.add_argument("--no-symmetrize", action="store_true", help="keep edges directed (default: add reverse edges)")
    p.set_defaults(func=run_graph, allow_nan=False, planetoid_name="", split_scheme=None, **SYNTHETIC_DEFAULTS)
    if name != "synthetic":
        p.add_argument("--allow-nan", action="store_true", help="accept NaN/inf features instead of failing")
    if name == "planetoid":
        p.add_argument("--planetoid-name", default="", help="file prefix, e.g. citeseer (default: --name, else cora)")
    if name == "ogb":
        p.add_argument("--split-scheme", default=None, help="which split/<scheme> to use (default: the first)")
    if name == "synthetic":
        p.add_argument("--nodes", type=int, default=20_000, help="number of nodes (default 20000)")
        p.add_argument("--avg-degree", type=float, default=10.0, help="mean in-degree (default 10)")
        p.add_argument("--classes", type=int, default=8, help="number of classes (default 8)")
        p.add_argument("--feat-dim", type=int, default=64, help="feature width (default 64)")
        p.add_argument("--kind", choices=["block", "rmat"], default="block", help="source distribution (default block)")
        p.add_argument("--homophily", type=float, default=0.8, help="share of same-class in-edges (default 0.8)")
        p.add_argument("--feature-noise", type=float, default=3.0, help="noise around class centroids (default 3.0)")
        p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
        p.add_argument("--train-fraction", type=float, default=0.6, help="share of nodes in the training split (default 0.6)")


SYNTHETIC_DEFAULTS = {
    "nodes": 20_000, "avg_degree": 10.0, "classes": 8, "feat_dim": 64, "kind": "block", "homophily": 0.8,
    "feature_noise": 3.0, "seed": 0, "train_fraction": 0.6,
}
"""What the synthetic-only options hold for the other graph formats (which ignore them)."""


def run_graph(args: argparse.Namespace) -> int:
    from strata.launch.progress import show_progress
    from strata.storage.ingest import ingest

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
            "train_fraction": args.train_fraction,
        },
        progress=show_progress(args),
    )
    print(
        f"wrote {args.out}: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges, "
        f"{meta.feat_dim} features, {meta.num_classes} classes"
    )
    return 0


# -- images ------------------------------------------------------------------------------------


def _value_range(text: str) -> tuple[float, float]:
    spelled = text.replace(" ", "")
    if spelled in ("0,1", "0.0,1.0"):
        return 0.0, 1.0
    if spelled in ("-1,1", "-1.0,1.0"):
        return -1.0, 1.0
    raise argparse.ArgumentTypeError(f"expected 0,1 or -1,1, got '{text}'")


def _store_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="", metavar="STORE", help="URL of the store to write (path, file://, memory://, s3://...)")
    # The older spelling, a positional STORE: still read, no longer shown.
    p.add_argument("store", nargs="?", default="", help=argparse.SUPPRESS)


def _store_url(args: argparse.Namespace) -> str:
    if args.store and args.out and args.store != args.out:
        raise IngestError(f"two store URLs given ('{args.store}' and --out '{args.out}'); give one, as --out STORE")
    url = args.out or args.store
    if not url:
        raise IngestError(f"'strata ingest {args.format}' needs --out STORE, the URL of the store to write")
    if not args.out:
        log.warning("'strata ingest %s ... STORE' is the older spelling: write --out %s, as every format takes it", args.format, url)
    return url


def _register_images(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "images",
        help=IMAGE_FORMATS["images"],
        description="Ingest image arrays (and class labels) into an image store.",
        epilog=_IMAGES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # '-1,1' starts with '-': let argparse read it as a value, not as an unknown option.
    p._negative_number_matcher = re.compile(r"^-\d+(\.\d*)?(,-?\d+(\.\d*)?)?$")
    p.add_argument("source", metavar="SRC", help="an .npy file, an .npz file or a folder of per-image .npy files")
    _store_argument(p)
    p.add_argument("--labels", default=None, metavar="FILE", help="class ids, one per image, from an .npy (or .npz) file")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default=None, help="where the channel axis is (default: from the shape)")
    p.add_argument(
        "--value-range", type=_value_range, default=None, metavar="0,1|-1,1",
        help="range of float images (default 0,1); uint8 images are always 0..255",
    )
    _common(p)
    p.set_defaults(func=run_images)


def run_images(args: argparse.Namespace) -> int:
    from strata.launch.progress import show_progress
    from strata.storage.ingest.images import ingest_images

    url = _store_url(args)
    meta = ingest_images(
        args.source, url, labels=args.labels, layout=args.layout, value_range=args.value_range,
        name=args.name, overwrite=args.overwrite, progress=show_progress(args),
    )
    return _report_images(url, meta)


def _register_digits(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "digits",
        help=IMAGE_FORMATS["digits"],
        description="Write scikit-learn's bundled digits set (1,797 8x8 grey images of the digits 0-9, "
        "shipped inside the scikit-learn package: no download) as a 1x8x8 image store with 10 classes.",
    )
    _store_argument(p)
    _common(p)
    p.set_defaults(func=run_digits)


def run_digits(args: argparse.Namespace) -> int:
    from strata.storage.ingest.images import ingest_digits

    url = _store_url(args)
    return _report_images(url, ingest_digits(url, name=args.name or "digits", overwrite=args.overwrite))


def _register_synthetic_images(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "synthetic-images",
        help=IMAGE_FORMATS["synthetic-images"],
        description="Generate labelled images whose classes differ in structure (grating orientation and "
        "frequency, blob position, colour), so a classifier can tell them apart and a class-conditional "
        "model has something to learn. Written block by block: any size fits; the same seed gives the "
        "same images.",
    )
    _store_argument(p)
    p.add_argument("--num", type=int, default=10_000, help="number of images (default 10000)")
    p.add_argument("--size", type=int, default=16, help="height and width in pixels (default 16)")
    p.add_argument("--channels", type=int, default=1, help="channels per image (default 1)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--noise", type=float, default=0.1, help="pixel noise standard deviation (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    _common(p)
    p.set_defaults(func=run_synthetic_images)


def run_synthetic_images(args: argparse.Namespace) -> int:
    from strata.launch.progress import show_progress
    from strata.storage.ingest.synthetic_images import (
        SyntheticImagesConfig,
        write_synthetic_images,
    )

    url = _store_url(args)
    cfg = SyntheticImagesConfig(
        num_images=args.num, image_size=args.size, channels=args.channels,
        num_classes=args.classes, noise=args.noise, seed=args.seed,
    )
    meta = write_synthetic_images(cfg, url, args.name or "synthetic-images", overwrite=args.overwrite, progress=show_progress(args))
    return _report_images(url, meta)


def _report_images(url: str, meta: DatasetMeta) -> int:
    extra = meta.extra
    shape = "x".join(str(v) for v in extra["image_shape"])
    classes = f"{meta.num_classes} classes" if meta.num_classes else "unlabelled"
    print(f"wrote {url}: {extra['num_images']:,} images of {shape} (C x H x W), {classes}")
    return 0
