"""A benchmark's figures as one JSON file (``--json PATH``), the same shape for every benchmark.

Every performance claim here is a ratio against a baseline measured in the same run; this
module writes those figures so that a script (CI, a regression check, a plot) can read them
without parsing tables meant for people. One shape, for every benchmark::

    {
      "benchmark": "ooc_features",           # the script's name
      "config": {"nodes": 2000000, ...},       # the run's command-line arguments
      "methods": {                             # each method's figures, baseline beside strata
        "memmap": {"epoch_seconds": 42.4, ...},
        "packed": {"epoch_seconds": 0.62, ...}
      },
      "ratios": {"memmap_over_packed_epoch": 68.1, ...},
      "context": {...}                         # the workload, shared by the methods (graph size, ...)
    }

A ratio's name reads ``<a>_over_<b>_<figure>[_<qualifier>]`` and its value is a / b, so
``graph_parallel_over_layer_pipeline_bytes_64`` is graph_parallel's bytes over layer_pipeline's
at 64 layers. Names are lower-case words joined by ``_`` (a script can use them as keys
anywhere). A ratio that cannot be formed (a zero denominator) is ``null``, never dropped, so
the set of keys is the same from run to run. Non-finite floats in any figure are written as
``null`` as well: ``NaN`` is not JSON, and strict parsers refuse it.

The file is written to a temporary sibling and renamed over ``PATH``, so a reader never sees
half a report, and an earlier report survives a run that fails while writing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

RATIO_NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")

INTERNAL_FLAGS = ("worker", "child", "child_method", "json")
"""Arguments that are not part of a run's configuration: how a benchmark calls itself in a
subprocess, and where the report goes."""


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``, with the same help in every benchmark."""
    parser.add_argument("--json", default="", metavar="PATH",
                        help="also write the configuration, each method's figures and the named ratios to this JSON file")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None where the denominator is 0 (the ratio is undefined,
    and a script should see that rather than a made-up infinity)."""
    return numerator / denominator if denominator else None


def print_ratios(ratios: Mapping[str, float | None]) -> None:
    """One line per named ratio on stdout, ``ratio <name>: <value>``: the figures a reader of
    the log compares, under the names the JSON gives them."""
    for name, value in ratios.items():
        print(f"ratio {name}: {'undefined' if value is None else f'{value:.4f}'}")


def publish(
    args: argparse.Namespace,
    benchmark: str,
    methods: Mapping[str, Mapping[str, object]],
    ratios: Mapping[str, float | None],
    context: Mapping[str, object] | None = None,
) -> None:
    """What every benchmark does at its end: print the named ratios, and write the report
    where ``--json`` asks (nowhere without it)."""
    print_ratios(ratios)
    if args.json:
        write_report(args.json, benchmark, args, methods, ratios, context)


def write_report(
    path: str | Path,
    benchmark: str,
    config: argparse.Namespace | Mapping[str, object],
    methods: Mapping[str, Mapping[str, object]],
    ratios: Mapping[str, float | None],
    context: Mapping[str, object] | None = None,
) -> None:
    """Write the report (shape in the module docstring) to ``path`` atomically.

    ``config`` may be the parsed arguments themselves: the flags a benchmark uses to call
    itself (``--worker``, ``--child``) and ``--json`` are left out of it.
    """
    bad = [name for name in ratios if not RATIO_NAME.match(name)]
    if bad:
        raise ValueError(f"ratio names must be lower-case words joined by '_' (a_over_b_figure); got {bad}")
    if isinstance(config, argparse.Namespace):
        config = {key: value for key, value in vars(config).items() if key not in INTERNAL_FLAGS}
    document = {
        "benchmark": benchmark,
        "config": config,
        "methods": methods,
        "ratios": dict(ratios),
        "context": context or {},
    }
    text = json.dumps(_plain(document), indent=1, allow_nan=False) + "\n"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {target}")


def _plain(value: object) -> object:
    """``value`` as plain JSON types: numpy scalars and arrays as numbers and lists, paths
    and other scalars as strings, dataclasses as objects, non-finite floats as None."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
