"""Epoch time per executor against link rate, from ``pipeline_vs_graph_parallel.py --hosts N --json``.

Reads one or more of the benchmark's JSON reports (each ``--link`` sweep, depth or repeat may be
its own file), and draws, for every depth found, one panel: epoch time (median of the timed
epochs) of each executor against the hosts' link rate on a log axis, with the unshaped link
placed one decade right of the fastest shaped rate. A point measured in several files (repeats)
is plotted at the median of all their timed epochs pooled (what docs/benchmarks.md tabulates),
each run's own median shown as a small dot. Where an
executor's line crosses graph_parallel's, the crossing (interpolated in log rate) is marked
and labelled; where it does not, the panel says which is faster at every rate measured.

    pip install 'strata[plot]'   # or: pip install matplotlib
    python benchmarks/plot_pipeline_sweep.py RESULT.json [RESULT.json ...] --out docs/pipeline_sweep.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

EXECUTORS = ("graph_parallel", "layer_pipeline", "hybrid")
COLOURS = {"graph_parallel": "tab:blue", "layer_pipeline": "tab:orange", "hybrid": "tab:green"}


Points = dict[int, dict[str, dict[float | None, list[tuple[float, list[float]]]]]]


def load_points(paths: list[Path]) -> tuple[Points, dict]:
    """(depth -> executor -> link rate in bit/s (None: unshaped) -> each run's (median epoch
    time, its timed epochs), the first report's context)."""
    points: Points = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in paths:
        report = json.loads(path.read_text())
        if report.get("benchmark") != "pipeline_vs_graph_parallel" or not report.get("context", {}).get("hosts"):
            raise SystemExit(f"{path} is not a report of pipeline_vs_graph_parallel.py --hosts N --json PATH")
        timed = report["context"]["timed_epochs"]
        for figures in report["methods"].values():
            run = (figures["epoch_seconds"], figures["epoch_seconds_all"][-timed:])
            points[figures["layers"]][figures["executor"]][figures["link_bits_per_second"]].append(run)
    return points, json.loads(paths[0].read_text())["context"]


def _position(rate: float | None, unshaped_at: float) -> float:
    return unshaped_at if rate is None else rate


def crossings(xs: list[float], a: list[float], b: list[float]) -> list[tuple[float, int]]:
    """Where line ``a`` crosses line ``b`` (both sampled at ``xs``, ascending): each crossing's
    rate, by linear interpolation of the difference in log rate, and the index of the sample
    left of it."""
    out = []
    for i in range(len(xs) - 1):
        d0, d1 = a[i] - b[i], a[i + 1] - b[i + 1]
        if d0 == 0:
            out.append((xs[i], i))
        elif d0 * d1 < 0:
            t = d0 / (d0 - d1)
            out.append((math.exp(math.log(xs[i]) + t * (math.log(xs[i + 1]) - math.log(xs[i]))), i))
    return out


def _rate_label(bits: float) -> str:
    return f"{bits / 1e9:.2g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:.3g} Mbit/s"


def draw(points: dict, context: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("matplotlib is not installed: pip install 'strata[plot]' (or pip install matplotlib)") from None
    hosts = context["hosts"]
    labels = {"graph_parallel": f"graph_parallel ({hosts} parts)", "layer_pipeline": f"layer_pipeline ({hosts} stages)",
              "hybrid": f"hybrid (2x{hosts // 2})"}
    depths = sorted(points, reverse=True)
    fig, axes = plt.subplots(1, len(depths), figsize=(6.2 * len(depths), 4.6), squeeze=False)
    for ax, layers in zip(axes[0], depths):
        by_executor = points[layers]
        shaped = sorted({r for runs in by_executor.values() for r in runs if r is not None})
        unshaped_at = 10 * max(shaped) if shaped else 1e10
        medians = {}
        for name in EXECUTORS:
            if name not in by_executor:
                continue
            runs = by_executor[name]
            rates = sorted(runs, key=lambda r: _position(r, unshaped_at))
            xs = [_position(r, unshaped_at) for r in rates]
            ys = [statistics.median([t for _, epochs in runs[r] for t in epochs]) for r in rates]
            medians[name] = dict(zip(xs, ys))
            ax.plot(xs, ys, "o-", color=COLOURS[name], label=labels[name])
            for x, r in zip(xs, rates):
                if len(runs[r]) > 1:
                    ax.plot([x] * len(runs[r]), [m for m, _ in runs[r]], ".", color=COLOURS[name], alpha=0.5)
        _mark_crossings(ax, medians, unshaped_at)
        ticks = shaped + ([unshaped_at] if any(None in runs for runs in by_executor.values()) else [])
        ax.set_xscale("log")
        ax.set_xticks(ticks, [_rate_label(t) for t in shaped] + (["unshaped"] if len(ticks) > len(shaped) else []))
        ax.minorticks_off()
        ax.set_xlabel("each host's link rate (tc tbf, both directions)")
        ax.set_ylabel("epoch time, s (median of the timed epochs)")
        ax.set_title(f"GCNII {layers} layers, {context['num_nodes']:,}-node R-MAT, {hosts} hosts x 1 rank")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def _mark_crossings(ax: object, medians: dict[str, dict[float, float]], unshaped_at: float) -> None:
    """Mark where each pipeline's line crosses graph_parallel's, or say which is faster throughout.
    A crossing between the fastest shaped rate and the unshaped link has no rate (the unshaped
    link's place on the axis is nominal): the interval is shaded instead."""
    gp = medians.get("graph_parallel")
    if gp is None:
        return
    notes = []
    for name in ("layer_pipeline", "hybrid"):
        other = medians.get(name)
        if other is None:
            continue
        xs = sorted(set(gp) & set(other))
        found = crossings(xs, [other[x] for x in xs], [gp[x] for x in xs])
        for x, i in found:
            if xs[i + 1] == unshaped_at:
                ax.axvspan(xs[i], unshaped_at, color=COLOURS[name], alpha=0.08)  # type: ignore[attr-defined]
                notes.append(f"{name} = graph_parallel between {_rate_label(xs[i])} and unshaped")
            else:
                ax.axvline(x, color=COLOURS[name], linestyle=":", alpha=0.8)  # type: ignore[attr-defined]
                notes.append(f"{name} = graph_parallel at ~{_rate_label(x)} (dotted)")
        if not found and xs:
            faster = all(other[x] < gp[x] for x in xs)
            notes.append(f"{name} {'faster' if faster else 'slower'} than graph_parallel at every rate measured")
    ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="JSON files written by pipeline_vs_graph_parallel.py --hosts N --json")
    parser.add_argument("--out", type=Path, default=Path("docs/pipeline_sweep.png"))
    args = parser.parse_args()
    missing = [str(p) for p in args.reports if not p.exists()]
    if missing:
        sys.exit(f"no such report: {', '.join(missing)}")
    draw(*load_points(args.reports), args.out)


if __name__ == "__main__":
    main()
