"""Out-of-core feature loading, one epoch per method: naive zarr rows, memmap gather, cached,
packed, and all in memory.

Every method produces the same batches (the same blocks and the same feature rows) for
epoch 0 of one seed; what differs is where the feature bytes come from:

* naive:     online sampling; each input row read on its own from the zarr array
             (``array[v]``: one chunk fetched and decoded per row)
* memmap:    online sampling; ``x = mm[ids]`` on a numpy memmap of a raw copy of the features
             (what "mmap the features" does in PyG/DGL on-disk training: a page fault per row)
* cached:    online sampling; hot nodes (by in-degree) in the host cache, misses read from the
             zarr array in chunk runs (strata features.mode: cached)
* packed:    blocks and features from a pack written by the offline pass; hot nodes (by
             access count) in the host cache, the rest read sequentially (features.mode: packed)
* in_memory: online sampling; the whole feature matrix in RAM

The page cache is kept from hiding reads with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every
file the method reads (store chunks, pack files, the raw copy): before the epoch and again
after every batch, so no method keeps more feature bytes in memory than its own budget (the
memmap also drops its mapped pages with ``madvise(MADV_DONTNEED)``: fadvise cannot evict
pages a process maps).
Bytes read are the process's ``read_bytes`` from /proc/self/io (what reached the block
device). Each method runs in a fresh process, so its peak RSS (``VmHWM``) is its own. Time
spent evicting pages between batches is not counted.
Slow methods stop after ``--method-seconds`` and are extrapolated to the whole epoch by the
rows they served (marked "extrapolated").

Example (from the repository root, virtualenv active)::

    python benchmarks/ooc_features.py --work /tmp/oocbench --nodes 2000000 --feat-dim 128 \\
        --host-cache 256MiB --markdown docs/benchmarks.md

With ``--json`` it also writes each method's figures (``methods["memmap"]``: epoch seconds,
bytes read, read amplification, peak RSS, ...), the offline pass under ``context``, and the
ratios ``<method>_over_packed_epoch``, ``<method>_over_packed_epoch_amortised`` (the offline
pass's cost spread over the epochs it serves) and ``packed_added_rss_over_host_cache``; see
benchmarks/report.py. The smallest useful run, half a minute on 2 cores::

    python benchmarks/ooc_features.py --work /tmp/oocsmall --nodes 50000 --feat-dim 16 --batch-size 64 \\
        --host-cache 2MiB --method-seconds 5 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import add_json_flag, publish, ratio

from strata.launch.commands.pack import parse_size

METHODS = ("naive", "memmap", "cached", "packed", "in_memory")
SECTION = "## Tiered feature store"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/strata-oocbench", help="where the store, raw copy and pack go (reused)")
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--train-fraction", type=float, default=0.02, help="share of nodes that are training seeds")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2, help="epochs the pack serves (its cost is amortised over them)")
    p.add_argument("--host-cache", type=parse_size, default=256 << 20, help="host budget of cached and packed")
    p.add_argument("--group-size", type=int, default=40, help="steps per pack group (one pass over the features each)")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--method-seconds", type=float, default=120.0, help="cap per method; slower ones are extrapolated")
    p.add_argument("--repeats", type=int, default=5, help="epochs timed per method when they fit the cap; the median is reported")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--markdown", default="", help="write the results as the 'Tiered feature store' section of this file")
    p.add_argument("--report-from", default="", help="rebuild the report from the log of an earlier run (no measuring)")
    add_json_flag(p)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- measurement helpers -------------------------------------------------------------------


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process image (ru_maxrss would carry the parent's peak over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def files_under(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(p for p in path.rglob("*") if p.is_file())
    return out


DROP_SECONDS = [0.0]


def drop_cache(files: list[Path]) -> None:
    """Evict the files' pages from the page cache (they are clean: written and synced)."""
    t0 = time.perf_counter()
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    DROP_SECONDS[0] += time.perf_counter() - t0


# -- setup (parent) ------------------------------------------------------------------------


def paths(args: argparse.Namespace) -> dict[str, Path]:
    work = Path(args.work)
    tag = f"n{args.nodes}-f{args.feat_dim}-d{args.avg_degree:g}-t{args.train_fraction:g}"
    store = work / f"store-{tag}"
    pack_tag = f"b{args.batch_size}-fo{args.fanouts.replace(',', '_')}-e{args.epochs}-h{args.host_cache}-g{args.group_size}"
    return {"work": work, "store": store, "raw": work / f"feat-{tag}.f32", "pack": work / f"pack-{tag}-{pack_tag}"}


def prepare(args: argparse.Namespace) -> dict[str, float]:
    from strata.storage.featstore.sampling import SamplerConfig
    from strata.storage.featstore.writer import Packer
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
    from strata.storage.store import DatasetStore

    p = paths(args)
    p["work"].mkdir(parents=True, exist_ok=True)
    if not (p["store"] / "_STRATA_COMPLETE").exists():
        print(f"writing the synthetic store {p['store']} ...", flush=True)
        cfg = SyntheticGraphConfig(
            num_nodes=args.nodes, avg_degree=args.avg_degree, feat_dim=args.feat_dim, kind="rmat",
            train_fraction=args.train_fraction, valid_fraction=0.01,
        )
        write_synthetic(cfg, str(p["store"]), overwrite=True)
    store = DatasetStore.open(str(p["store"]))
    if not p["raw"].exists():
        print("writing the raw feature copy for memmap ...", flush=True)
        tmp = p["raw"].with_suffix(".partial")
        with open(tmp, "wb") as out:
            for _, block in store.iter_blocks("node/feat"):
                out.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
        tmp.rename(p["raw"])
    sampler = SamplerConfig([int(f) for f in args.fanouts.split(",")], args.batch_size, seed=0)
    packer = Packer(
        str(p["store"]), sampler, args.epochs, str(p["pack"]), host_cache_bytes=args.host_cache,
        group_size=args.group_size, progress=True,
    )
    print("offline sampling and packing ...", flush=True)
    result = packer.run()
    os.sync()
    s = result.summary
    return {
        "sample_seconds": s.sample_seconds,
        "pack_seconds": s.pack_seconds,
        "pack_bytes_read": s.bytes_read,
        "pack_bytes_written": s.bytes_written,
        "hot_rows": s.hot_rows,
        "hot_access_share": s.hot_access_share,
        "steps_per_epoch": result.manifest.steps_per_epoch,
        "max_input_rows": s.max_input_rows,
        "feat_bytes": args.nodes * args.feat_dim * 4,
        "train_nodes": len(store.split("train")),
    }


# -- one method, one epoch (child) ----------------------------------------------------------


def run_child(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from strata.storage import layout
    from strata.storage.featstore.config import FeaturesConfig
    from strata.storage.featstore.loader import CachedLoader, open_packed
    from strata.storage.featstore.prefetch import prefetched
    from strata.storage.featstore.sampling import (
        EpochPlan,
        NeighbourSampler,
        SamplerConfig,
        sample_step,
    )
    from strata.storage.store import DatasetStore

    method = args.child
    p = paths(args)
    store = DatasetStore.open(str(p["store"]))
    sampler_cfg = SamplerConfig([int(f) for f in args.fanouts.split(",")], args.batch_size, seed=0)
    train = store.split("train")
    row_bytes = args.feat_dim * 4
    features = FeaturesConfig(
        mode="packed" if method == "packed" else "cached", host_cache_bytes=args.host_cache,
        prefetch=args.prefetch, workers=args.workers, pack_dir=str(p["pack"]),
    )
    watched = {
        "naive": [p["store"] / "node" / "feat"],
        "memmap": [p["raw"]],
        "cached": [p["store"] / "node" / "feat"],
        "packed": [p["pack"], p["store"] / "node" / "feat"],
        "in_memory": [],
    }[method]
    files = files_under(watched)

    csc = store.csc() if method != "packed" else None
    if csc is not None:
        sampler = NeighbourSampler(csc[0], csc[1], sampler_cfg.fanouts)
    plan = EpochPlan(train, sampler_cfg.batch_size, sampler_cfg.seed)
    steps = plan.steps_per_epoch()
    rss_fixed = rss_bytes()  # interpreter, torch, DGL, the graph: before any feature memory

    t_setup = time.perf_counter()
    drop_cache(files)
    r_setup = read_bytes()
    loader = None
    if method == "in_memory":
        feat = np.fromfile(p["raw"], dtype=np.float32).reshape(args.nodes, args.feat_dim)
    elif method == "memmap":
        mm = np.memmap(p["raw"], dtype=np.float32, mode="r", shape=(args.nodes, args.feat_dim))
    elif method == "naive":
        array = store.array(layout.FEAT)
    elif method == "cached":
        loader = CachedLoader(store, csc, sampler_cfg, train, features)
    else:
        loader = open_packed(features, str(p["store"]), sampler_cfg, args.epochs, train)
    setup_seconds = time.perf_counter() - t_setup
    setup_read = read_bytes() - r_setup
    order = plan.order(0)
    epoch_start = [0.0]  # the naive reader checks its time budget against this

    def online(step: int) -> tuple[list[object], torch.Tensor]:
        sampled = sample_step(sampler, plan, order, 0, step)
        ids = sampled.input_nodes
        if method == "in_memory":
            x = torch.from_numpy(np.take(feat, ids, axis=0))
        elif method == "memmap":
            x = torch.from_numpy(mm[ids])
            mm._mmap.madvise(mmap.MADV_DONTNEED)  # unmap its pages, or fadvise cannot evict them
        else:
            x = torch.empty((len(ids), args.feat_dim))
            for i, v in enumerate(ids):
                x[i] = torch.from_numpy(np.asarray(array[int(v)]))
                if i % 256 == 255:
                    drop_cache(files)
                    if time.perf_counter() - epoch_start[0] - DROP_SECONDS[0] > args.method_seconds:
                        return sampled.to_blocks(), x[: i + 1]
        return sampled.to_blocks(), x

    def stored(step: int) -> tuple[list[object], torch.Tensor]:
        loaded = loader.load(0, step)
        return loaded.blocks, loaded.x

    def one_epoch() -> tuple[float, int, int, int]:
        """(seconds, rows, steps done, bytes read) of epoch 0, from cold files."""
        drop_cache(files)
        r0 = read_bytes()
        DROP_SECONDS[0] = 0.0
        t0 = epoch_start[0] = time.perf_counter()
        rows = done = 0
        if loader is not None:
            source = prefetched(stored, range(steps), depth=args.prefetch, workers=args.workers)
        else:
            source = (online(s) for s in range(steps))
        for _blocks, x in source:
            rows += len(x)
            done += 1
            drop_cache(files)
            if time.perf_counter() - t0 - DROP_SECONDS[0] > args.method_seconds:
                break
        seconds = time.perf_counter() - t0 - DROP_SECONDS[0]
        source.close()
        return seconds, rows, done, read_bytes() - r0

    runs = [one_epoch()]
    counters = loader.counters.snapshot() if loader is not None else None
    while runs[0][2] == steps and len(runs) < args.repeats and sum(r[0] for r in runs) < args.method_seconds:
        runs.append(one_epoch())
    times = sorted(r[0] for r in runs)
    seconds, rows, done_steps, nbytes = runs[0]
    seconds = times[len(times) // 2]
    total_rows = None
    if done_steps < steps or method == "naive":
        # Rows of the whole epoch, for extrapolating the slow methods.
        if csc is None:
            sampler = NeighbourSampler(*store.csc(), sampler_cfg.fanouts)
        total_rows = 0
        for s in range(steps):
            total_rows += len(sample_step(sampler, plan, order, 0, s).input_nodes)
    out: dict[str, object] = {
        "method": method,
        "steps": done_steps,
        "steps_per_epoch": steps,
        "rows": rows,
        "seconds": seconds,
        "read_bytes": nbytes,
        "setup_seconds": setup_seconds,
        "setup_read_bytes": setup_read,
        "rss_fixed": rss_fixed,
        "peak_rss": peak_rss_bytes(),
        "row_bytes": row_bytes,
        "extrapolated": total_rows is not None and rows < total_rows,
        "epoch_seconds_all": [r[0] for r in runs],
    }
    if total_rows is not None and rows < total_rows:
        scale = total_rows / max(rows, 1)
        out.update(seconds=seconds * scale, read_bytes=int(nbytes * scale), rows=total_rows, measured_rows=rows, measured_seconds=seconds)
    if loader is not None:
        out["counters"] = counters
        loader.close()
    return out


# -- report --------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(args: argparse.Namespace, prep: dict[str, float], results: list[dict]) -> str:
    by = {r["method"]: r for r in results}
    packed = by.get("packed")
    lines = [
        "| method | epoch wall time | x packed | bytes read | read amplification | peak RSS | RSS over fixed overhead |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        needed = r["rows"] * r["row_bytes"]
        ratio = f"{r['seconds'] / packed['seconds']:.1f}x" if packed else "-"
        runs = r.get("epoch_seconds_all", [])
        if r["extrapolated"]:
            note = " (extrapolated from {:,} rows in {:.0f} s)".format(r["measured_rows"], r["measured_seconds"])
        elif len(runs) > 1:
            note = f" (median of {len(runs)}: {min(runs):.2f}-{max(runs):.2f})"
        else:
            note = ""
        lines.append(
            f"| {r['method']} | {r['seconds']:.2f} s{note} | {ratio} | {gib(r['read_bytes'])} | "
            f"{r['read_bytes'] / needed:.2f} | {gib(r['peak_rss'])} | {gib(r['peak_rss'] - r['rss_fixed'])} |"
        )
    return "\n".join(lines)


def report(args: argparse.Namespace, prep: dict[str, float], results: list[dict], command: str) -> str:
    by = {r["method"]: r for r in results}
    offline = prep["sample_seconds"] + prep["pack_seconds"]
    text = [
        SECTION,
        "",
        "Command (repository root, virtualenv active):",
        "",
        "```",
        command,
        "```",
        "",
        f"Graph: synthetic R-MAT, {args.nodes:,} nodes, mean in-degree {args.avg_degree:g}, features "
        f"{args.nodes:,} x {args.feat_dim} float32 = {gib(prep['feat_bytes'])}; host cache budget "
        f"{gib(args.host_cache)} ({prep['feat_bytes'] / args.host_cache:.1f}x smaller than the features). "
        f"{prep['train_nodes']:,} training seeds, batch {args.batch_size}, fanouts {args.fanouts}: "
        f"{prep['steps_per_epoch']} steps per epoch, up to {prep['max_input_rows']:,} input rows per batch. "
        f"Prefetch {args.prefetch}, {args.workers} worker thread(s).",
        "",
        "Page cache: `posix_fadvise(POSIX_FADV_DONTNEED)` on every file a method reads, before the epoch and "
        "after every batch, and `madvise(MADV_DONTNEED)` on the memmap after every batch (so no method keeps "
        "feature bytes in memory beyond its own budget: the features do not fit the host in this model); bytes "
        "read are `read_bytes` of /proc/self/io. Each method runs in a fresh process; peak RSS is its `VmHWM`; the "
        "fixed overhead is its RSS before any feature memory (interpreter, torch, DGL, the graph's CSC). "
        "Epoch time is the data path only (sampling or reading blocks, gathering features, building DGL "
        "blocks), no model: the online methods sample each batch as they go, packed reads the blocks the "
        "offline pass recorded, which is why it can beat all-in-memory on the epoch (the sampling moved "
        "into the offline pass, whose cost is printed and amortised below). Machine: a 2-core VM, no GPU, "
        "shared with other engineers' jobs (load average 5-8 during the run), so times are noisy; fast "
        "methods report the median of repeated cold epochs. The memmap's peak RSS counts the file pages "
        "its page faults read ahead within a batch.",
        "",
        table(args, prep, results),
        "",
        f"Offline sampling + packing: {prep['sample_seconds']:.1f} s sampling + {prep['pack_seconds']:.1f} s packing "
        f"= {offline:.1f} s for {args.epochs} epochs, {offline / args.epochs:.1f} s per epoch served; it read "
        f"{gib(prep['pack_bytes_read'])} from the feature array in chunk runs and wrote {gib(prep['pack_bytes_written'])}. "
        f"Hot set: {prep['hot_rows']:,} nodes serving {prep['hot_access_share']:.1%} of row reads "
        f"(the budget less the batches in flight).",
    ]
    if "packed" in by:
        p = by["packed"]
        lines = [f"packed epoch + amortised offline pass: {p['seconds'] + offline / args.epochs:.2f} s"]
        for other in ("memmap", "in_memory", "cached", "naive"):
            if other in by:
                lines.append(f"{other} / packed: {by[other]['seconds'] / p['seconds']:.2f}x "
                             f"(with the offline pass amortised: {by[other]['seconds'] / (p['seconds'] + offline / args.epochs):.2f}x)")
        if "memmap" in by:
            speedup = by["memmap"]["seconds"] / p["seconds"]
            lines.append(f"target packed >= 8x faster than memmap: {'met' if speedup >= 8 else 'NOT met'} ({speedup:.1f}x)")
        if "in_memory" in by:
            slower = p["seconds"] / by["in_memory"]["seconds"]
            lines.append(f"target packed within 1.3x of in_memory: {'met' if slower <= 1.3 else 'NOT met'} ({slower:.2f}x)")
        over = p["peak_rss"] - p["rss_fixed"]
        lines.append(
            f"packed peak RSS over its fixed overhead: {over / 2**20:.1f} MiB for a {args.host_cache / 2**20:.0f} MiB budget "
            f"({(over - args.host_cache) / 2**20:+.1f} MiB)"
        )
        c = p.get("counters", {})
        if c:
            hits = {t: v["hits"] for t, v in c["tiers"].items()}
            lines.append(f"packed rows by tier: {hits}; cache fill at start {gib(c['cache_fill_bytes'])} in {p['setup_seconds']:.1f} s")
        text += ["", "```", *lines, "```"]
    return "\n".join(text) + "\n"


def figures(args: argparse.Namespace, prep: dict, results: list[dict]) -> tuple[dict, dict, dict]:
    """(methods, ratios, context) of the JSON report: each method's figures with its read
    amplification; every online method's epoch over packed's, as measured and with the offline
    pass amortised over the epochs the pack serves; packed's memory over its budget."""
    methods = {r["method"]: {**r, "read_amplification": ratio(r["read_bytes"], r["rows"] * r["row_bytes"])} for r in results}
    offline = prep["sample_seconds"] + prep["pack_seconds"]
    context = {**prep, "offline_seconds": offline, "offline_seconds_per_epoch": offline / args.epochs}
    ratios: dict[str, float | None] = {}
    packed = methods.get("packed")
    if packed is not None:
        amortised = packed["seconds"] + offline / args.epochs
        for other in ("memmap", "in_memory", "cached", "naive"):
            if other in methods:
                ratios[f"{other}_over_packed_epoch"] = ratio(methods[other]["seconds"], packed["seconds"])
                ratios[f"{other}_over_packed_epoch_amortised"] = ratio(methods[other]["seconds"], amortised)
        ratios["packed_added_rss_over_host_cache"] = ratio(packed["peak_rss"] - packed["rss_fixed"], args.host_cache)
    return methods, ratios, context


def write_section(path: Path, section: str) -> None:
    old = path.read_text() if path.exists() else "# strata benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + section + (old[end + 1 :] if end >= 0 else "")
        if end >= 0 and not section.endswith("\n\n"):
            new = old[:start] + section + "\n" + old[end + 1 :]
    path.write_text(new)


def _from_log(path: Path) -> tuple[dict, list[dict], str]:
    """The setup figures, per-method results and command of an earlier run's output."""
    text = path.read_text().replace("\r", "\n").splitlines()
    prep = next(json.loads(line.split(": ", 1)[1]) for line in text if line.startswith("setup "))
    results = [json.loads(line) for line in text if line.startswith('{"method"')]
    command = next(line for line in text if line.startswith("python benchmarks/ooc_features.py"))
    return prep, results, command


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    if args.report_from:
        prep, results, command = _from_log(Path(args.report_from))
        section = report(args, prep, results, command)
        print(section)
        if args.markdown:
            write_section(Path(args.markdown), section)
        publish(args, "ooc_features", *figures(args, prep, results))
        return 0
    t = time.perf_counter()
    prep = prepare(args)
    print(f"setup {time.perf_counter() - t:.1f} s: {json.dumps(prep)}", flush=True)
    results = []
    for method in args.methods.split(","):
        argv_child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", method]
        proc = subprocess.run(argv_child, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"method {method} failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    command = "python benchmarks/ooc_features.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    section = report(args, prep, results, command)
    print(section)
    if args.markdown:
        write_section(Path(args.markdown), section)
    publish(args, "ooc_features", *figures(args, prep, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
