"""The `strata` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from strata.errors import StrataError

DESCRIPTION = """\
strata trains graph neural networks on graphs that outgrow one machine.

Typical flow:
  strata ingest planetoid DIR --name cora --out stores/cora    raw data -> dataset store
  strata info stores/cora --verify                             inspect and check a store
  strata train examples/cora_gcn.yaml                          train from a YAML config
  strata sample runs/digits                                    samples from a diffusion run
  strata quickstart                                            all of it on a synthetic graph
"""


def build_parser() -> argparse.ArgumentParser:
    from strata.launch.commands import (
        info,
        ingest,
        launch,
        pack,
        partition,
        quickstart,
        sample,
        train,
    )

    parser = argparse.ArgumentParser(
        prog="strata", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"strata {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (quickstart, ingest, info, train, sample, partition, pack, launch):
        module.register(sub)
    return parser


def _version() -> str:
    from strata import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="strata %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except StrataError as exc:
        print(f"strata: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("strata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
