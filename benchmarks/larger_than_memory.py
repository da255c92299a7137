"""The larger-than-memory path through the command line, step by step, as a user runs it.

``strata ingest synthetic`` -> ``strata partition --method fennel`` -> ``strata pack`` ->
``strata train`` (minibatch GraphSAGE, features served from the pack by the tiered store, scored
by the sampled evaluation on ``--eval-nodes`` nodes of each split), each step a fresh process,
then two timed epochs measured side by side in fresh processes:

* packed:  blocks and features from the pack (sequential reads), hot rows from the host
           cache, loaded ahead on a thread, the model trained on every batch
* memmap:  the same batches sampled online over the CSC, features gathered from a numpy
           memmap of a raw copy of the feature matrix (what training "on a memory-mapped
           file" does), the same model; a sample of batches, extrapolated to the epoch by
           the number of steps (said so in the output)
* memmap_random: the same, the mapping advised ``MADV_RANDOM`` (the kernel then reads only the
           pages asked for, not its default read-ahead around each fault): the baseline a user
           who knows the access is random would run, far stronger than the plain memmap

Per step: wall time, peak RSS (``ru_maxrss`` of the step's process from ``wait4``), bytes
read and written (``ru_inblock``/``ru_oublock``: the block-device bytes /proc/PID/io counts
as read_bytes/write_bytes), and the memory budget the step is held to (a formula in the
sizes of the graph, see :func:`budgets`; what dominates it is named there). The page cache is
dropped (``echo 3 > /proc/sys/vm/drop_caches``, root) before each timed epoch; without root
the benchmark says so and evicts the files it reads with ``posix_fadvise`` instead. The
disk's sequential read bandwidth is measured in the same run with O_DIRECT reads of the raw
feature copy, beside the packed epoch's read bandwidth and its data-wait share (time the
training step waited for a batch over the epoch: near 0 means compute-bound).

``--scale 1`` is the full size: 64M nodes x 128 float32 features (32 GiB, 1.33x a 24 GiB
machine), mean in-degree 8 (about 500M edges). ``--scale 0.002`` runs in about a minute::

    python benchmarks/larger_than_memory.py --work /tmp/ltm --scale 0.002 --json /tmp/ltm.json

JSON (``--json``): ``methods`` holds each step's figures and the epochs; ``ratios`` holds
``memmap_over_packed_epoch``, ``memmap_random_over_packed_epoch``,
``packed_over_disk_read_bandwidth`` and, per step,
``<step>_peak_rss_over_budget``.
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

from report import add_json_flag, publish, ratio

from strata.launch.commands.pack import parse_size

FULL_NODES = 64_000_000
STEPS = ("ingest", "partition", "pack", "train")
EPOCHS = ("packed", "memmap", "memmap_random")
GIB = 1 << 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/strata-ltm", help="where the store, pack, raw copy and runs go")
    p.add_argument("--scale", type=float, default=0.002, help="share of the full size (64M nodes); 1 = full")
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--avg-degree", type=float, default=8.0)
    p.add_argument("--train-fraction", type=float, default=0.01, help="share of nodes that are training seeds")
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--eval-nodes", type=int, default=4000,
                   help="train.eval_nodes: nodes of each split the sampled evaluation scores (0 = all)")
    p.add_argument("--host-cache", default="auto",
                   help="host budget of the tiered store (pack and train); auto = 1/16 of the features, at least 192MiB")
    p.add_argument("--baseline-steps", type=int, default=20, help="memmap batches timed (then extrapolated)")
    p.add_argument("--epochs", default=",".join(EPOCHS), help="timed epochs to run, of " + ", ".join(EPOCHS))
    p.add_argument("--epoch-seconds", type=float, default=900.0, help="cap on the packed epoch; beyond it, extrapolated")
    p.add_argument("--steps", default=",".join(STEPS), help="CLI steps to run (finished ones are kept: see --redo)")
    p.add_argument("--no-epochs", action="store_true", help="only the CLI steps: no raw copy, disk bandwidth or timed epochs")
    p.add_argument("--redo", action="store_true", help="run every step again even when its output exists")
    add_json_flag(p)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [m for m in args.epochs.split(",") if m and m not in EPOCHS]
    if unknown:
        p.error(f"--epochs: unknown {', '.join(unknown)}; choose from {', '.join(EPOCHS)}")
    return args


def sizes(args: argparse.Namespace) -> dict[str, int]:
    nodes = max(2000, int(FULL_NODES * args.scale))
    return {"nodes": nodes, "edges_estimate": int(nodes * args.avg_degree), "feat_bytes": nodes * args.feat_dim * 4}


def host_cache_bytes(args: argparse.Namespace) -> int:
    """The tiered store's host budget: as given, or a sixteenth of the features (2 GiB at full size)."""
    if args.host_cache == "auto":
        return max(192 << 20, sizes(args)["feat_bytes"] // 16)
    return parse_size(args.host_cache)


def paths(args: argparse.Namespace) -> dict[str, Path]:
    work = Path(args.work)
    tag = f"n{sizes(args)['nodes']}-f{args.feat_dim}-d{args.avg_degree:g}"
    return {"work": work, "store": work / f"store-{tag}", "pack": work / f"pack-{tag}-h{host_cache_bytes(args)}",
            "raw": work / f"feat-{tag}.f32", "run": work / f"run-{tag}", "config": work / f"train-{tag}.yaml"}


# -- memory budgets ---------------------------------------------------------------------------


def budgets(args: argparse.Namespace, nodes: int, edges: int) -> dict[str, int]:
    """Peak RSS each step is held to, in bytes: a fixed base (interpreter, numpy, zarr, torch and
    DGL where the step imports them) plus what grows with the graph, fitted to peaks measured at
    16k, 128k, 1.28M and 6.4M nodes (mean in-degree 8) with headroom. What dominates at full size:

    * ingest: per-node arrays (labels, the class order, the R-MAT ranking, the split
      permutation: 40 B a node) and one generation block (up to 65,536 nodes' features and
      edges through zarr's encoder, ~320 MiB when full); edges and features are written block by block.
    * partition: per-node arrays (:func:`strata.partitioners.build.build_memory_bytes`: the
      row pointer, the assignment, a byte of halo marks per node and part, the rings (8 B a
      halo node, replication under 2 for fennel), one part's id map and local rows) and one
      chunk of 4M edges (~80 B an edge): the build streams the edges, the assignment is O(N).
      4 B a node more than the build's own estimate: the full-size run peaked at 3.40 GiB.
    * pack: the access counts (8 B a node) throughout; while sampling, the CSC the sampler walks
      (int32 src ids: 4 B an edge, 8 B a node, and the batches' records: 6 B an edge in all);
      then, once the CSC is freed, the hot rows twice (read in id order, then reordered: 2 x the
      host budget), later a window of groups' rows (up to the host budget) and one group's
      segments being written (up to 1.25 x 32 batches); a read of the feature array (zarr holds
      compressed and decoded chunks: 3 x 32 MiB). Measured at full size: 4.87 GiB (2 GB host
      budget), the hot-set phase.
    * train: the CSC the evaluation's sampler walks, held compact (int32 src ids: 4 B an edge,
      1.9 GiB at full size; the int64 row pointer, 8 B a node), the labels in int8 (1 B a node),
      the training split (the valid and test splits cut to the evaluated nodes), the sampler's
      node map (4 B a node) and the evaluation's input marks (1 B a node), the host budget, the
      sampled evaluation's rows (a quarter of the host budget, at least 64 MiB) and one
      evaluation batch's forward pass; the packed batches need no graph. Measured 1.01 GiB at
      1.28M nodes and 1.29-1.31 GiB at 6.4M (host budget ~192 MiB): 61 B an added node with its
      ~8 edges (int64 ids, labels and splits before: 112 B), ~15 B a node of it zarr's read
      buffers and the allocator's retained blocks.
    """
    import numpy as np

    host = host_cache_bytes(args)
    base = 512 << 20
    fanouts = [int(f) for f in args.fanouts.split(",")]
    steps = -(-int(args.train_fraction * nodes) // args.batch_size)
    # One pack group's rows: the union of up to 32 steps' inputs, each at most batch x prod(1 + fanout).
    # A read of the feature array: zarr holds its compressed and decoded chunks at once, up to 3 x 32 MiB.
    reads = 3 * min(nodes * args.feat_dim * 4, 32 << 20)
    group_rows = min(nodes, min(32, steps) * args.batch_size * int(np.prod([1 + f for f in fanouts])))
    # A sampled evaluation batch's forward pass: its inputs' rows and hidden activations, twice over.
    eval_batch = min(nodes, args.batch_size * int(np.prod([1 + f for f in fanouts]))) * (args.feat_dim + 2 * args.hidden) * 8
    return {
        "ingest": base + 40 * nodes + (320 << 20) * min(nodes, 65_536) // 65_536,
        "partition": base + (29 + args.parts + 48 // args.parts) * nodes + 80 * min(edges, 1 << 22),
        "pack": base + 16 * nodes + max(6 * edges, 2 * host) + group_rows * args.feat_dim * 5 + reads,
        "train": base + host + max(64 << 20, host // 4) + reads + 4 * edges + 32 * nodes + eval_batch,
    }


# -- running a step -------------------------------------------------------------------------


def run_step(name: str, argv: list[str], log: Path) -> dict[str, float]:
    """Run one CLI step in a fresh process: its wall time, peak RSS and block I/O."""
    env = {**os.environ, "DGLBACKEND": "pytorch", "PYTHONUNBUFFERED": "1"}
    print(f"[{name}] {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"step {name} failed with exit status {proc.returncode}; its output is in {log}")
    return {
        "seconds": seconds,
        "peak_rss": usage.ru_maxrss * 1024,
        "read_bytes": usage.ru_inblock * 512,
        "write_bytes": usage.ru_oublock * 512,
    }


def strata_cmd() -> list[str]:
    return [sys.executable, "-m", "strata.launch.cli"]


def step_argv(args: argparse.Namespace, step: str, p: dict[str, Path]) -> list[str]:
    n = sizes(args)["nodes"]
    store = str(p["store"])
    if step == "ingest":
        return [*strata_cmd(), "ingest", "synthetic", "--out", store, "--overwrite", "--nodes", str(n), "--kind", "rmat",
                "--avg-degree", f"{args.avg_degree:g}", "--feat-dim", str(args.feat_dim), "--train-fraction", f"{args.train_fraction:g}"]
    if step == "partition":
        return [*strata_cmd(), "partition", store, "--method", "fennel", "--parts", str(args.parts), "--overwrite", "--json"]
    if step == "pack":
        return [*strata_cmd(), "pack", store, "--fanouts", args.fanouts, "--batch-size", str(args.batch_size), "--epochs", "1",
                "--host-cache-bytes", str(host_cache_bytes(args)), "--out", str(p["pack"]), "--overwrite"]
    p["config"].write_text(train_config(args, p))
    return [*strata_cmd(), "train", str(p["config"]), "--overwrite", "--json"]


def train_config(args: argparse.Namespace, p: dict[str, Path]) -> str:
    fanouts = ", ".join(args.fanouts.split(","))
    return (
        f"name: larger-than-memory\nrun_dir: {p['run']}\ndata:\n  store: {p['store']}\n"
        f"model:\n  name: sage\n  hidden: {args.hidden}\n  num_layers: {len(args.fanouts.split(','))}\n  dropout: 0.0\n"
        f"train:\n  mode: minibatch\n  epochs: 1\n  lr: 0.003\n  weight_decay: 0.0\n  batch_size: {args.batch_size}\n"
        f"  fanouts: [{fanouts}]\n  seed: 0\n  eval: sampled\n  eval_nodes: {args.eval_nodes}\n"
        f"features:\n  mode: packed\n  host_cache_bytes: {host_cache_bytes(args)}\n  pack_dir: {p['pack']}\n"
    )


def done(step: str, p: dict[str, Path]) -> bool:
    marker = {"ingest": p["store"] / "_STRATA_COMPLETE", "pack": p["pack"] / "_PACK_COMPLETE"}.get(step)
    return marker is not None and marker.exists()


# -- the page cache and the disk --------------------------------------------------------------


def drop_page_cache(files: list[Path]) -> str:
    """Drop the whole page cache when root may; else evict ``files`` with posix_fadvise."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return "fadvise"


def disk_read_bandwidth(path: Path, max_bytes: int = 2 * GIB, seconds: float = 5.0) -> float:
    """Bytes per second of sequential O_DIRECT reads of ``path`` (16 MiB a read, page cache bypassed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 16 << 20)  # page aligned, as O_DIRECT needs
    total, t0 = 0, time.perf_counter()
    try:
        while total < max_bytes and time.perf_counter() - t0 < seconds:
            got = os.readv(fd, [buf])
            if got <= 0:
                break
            total += got
    finally:
        os.close(fd)
    return total / (time.perf_counter() - t0)


def files_under(*roots: Path) -> list[Path]:
    return [f for r in roots for f in ([r] if r.is_file() else r.rglob("*")) if f.is_file()]


def write_raw_copy(p: dict[str, Path]) -> None:
    """The feature matrix as one raw float32 file: the memmap baseline's input."""
    if p["raw"].exists():
        return
    import numpy as np

    from strata.storage.store import DatasetStore

    store = DatasetStore.open(str(p["store"]))
    tmp = p["raw"].with_suffix(".partial")
    with open(tmp, "wb") as out:
        for _, block in store.iter_blocks("node/feat"):
            out.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    tmp.rename(p["raw"])


# -- the timed epochs (children) ----------------------------------------------------------------


def self_read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def epoch_child(args: argparse.Namespace, method: str) -> dict[str, object]:
    """One epoch of training (packed: all of it; memmap: a sample of batches), from a cold page cache."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.storage.featstore.sampling import EpochPlan, SamplerConfig
    from strata.storage.store import DatasetStore

    p = paths(args)
    store = DatasetStore.open(str(p["store"]))
    fanouts = [int(f) for f in args.fanouts.split(",")]
    sampler_cfg = SamplerConfig(fanouts, args.batch_size, seed=0)
    train = store.split("train")
    labels = torch.from_numpy(store.labels())
    test = store.split("test")
    majority = float(np.bincount(labels[test].numpy()).max() / max(len(test), 1))
    torch.manual_seed(0)
    model = build_gnn(ModelConfig(name="sage", hidden=args.hidden, num_layers=len(fanouts), dropout=0.0), args.feat_dim,
                      store.meta.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    steps = EpochPlan(train, args.batch_size, 0).steps_per_epoch()
    source, limit, files, loader = _epoch_source(args, method, p, store, sampler_cfg, train, steps)
    from strata._dgl import dgl  # noqa: F401  (imported here, not on the first batch of the timed epoch)
    how = drop_page_cache(files)
    r0, t0, wait, done = self_read_bytes(), time.perf_counter(), 0.0, 0
    for _ in range(limit):
        tw = time.perf_counter()
        blocks, x, out = next(source)
        wait += time.perf_counter() - tw
        logits = model(model_blocks(blocks), x)
        loss = F.cross_entropy(logits, labels[torch.from_numpy(out)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if time.perf_counter() - t0 > args.epoch_seconds:
            break
    seconds, nbytes = time.perf_counter() - t0, self_read_bytes() - r0
    source.close()
    result: dict[str, object] = {
        "method": method, "steps_timed": done, "steps_per_epoch": steps, "seconds_timed": seconds,
        "epoch_seconds": seconds * steps / max(done, 1), "extrapolated": done < steps, "read_bytes_timed": nbytes,
        "read_bandwidth": nbytes / seconds if seconds else 0.0, "data_wait_seconds": wait, "data_wait_share": wait / seconds,
        "page_cache": how, "last_loss": float(loss), "test_majority_share": majority,
    }
    if loader is not None:
        hits = loader.counters.cache_hits()
        result["rows_by_tier"] = hits
        result["hot_hit_rate"] = (hits["device"] + hits["host"]) / max(sum(hits.values()), 1)
        loader.close()
    return result


def _epoch_source(args, method, p, store, sampler_cfg, train, steps):  # noqa: ANN001, ANN202 (benchmark plumbing)
    """(iterator of (blocks, x, output ids), steps to time, files read, loader or None)."""
    import numpy as np
    import torch

    from strata.storage.featstore.config import FeaturesConfig
    from strata.storage.featstore.loader import open_packed
    from strata.storage.featstore.prefetch import prefetched
    from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, sample_step

    if method == "packed":
        features = FeaturesConfig(mode="packed", host_cache_bytes=host_cache_bytes(args), pack_dir=str(p["pack"]))
        loader = open_packed(features, str(p["store"]), sampler_cfg, 1, train)

        def load(step: int) -> tuple:
            got = loader.load(0, step)
            return got.blocks, got.x, got.output_nodes

        source = prefetched(load, range(steps), depth=features.prefetch, workers=features.workers)
        return source, steps, files_under(p["pack"]), loader
    indptr, indices = store.csc()
    sampler = NeighbourSampler(indptr, indices, sampler_cfg.fanouts)
    plan = EpochPlan(train, args.batch_size, 0)
    order = plan.order(0)
    n = store.meta.num_nodes
    feat = np.memmap(p["raw"], dtype=np.float32, mode="r", shape=(n, args.feat_dim))
    if method == "memmap_random":
        import mmap

        feat._mmap.madvise(mmap.MADV_RANDOM)  # numpy keeps the mmap object it maps

    def online() -> object:
        for step in range(steps):
            batch = sample_step(sampler, plan, order, 0, step)
            yield batch.to_blocks(), torch.from_numpy(feat[batch.input_nodes]), batch.output_nodes

    return online(), min(steps, args.baseline_steps), [p["raw"]], None


def model_blocks(blocks: list) -> list:
    """The sampled blocks as the models take them: strata Blocks where the models compute on them."""
    import strata.models.gnn as gnn

    block = getattr(gnn, "Block", None)
    return blocks if block is None else [b if isinstance(b, block) else block.from_dgl(b) for b in blocks]


def raw_child(args: argparse.Namespace) -> dict[str, object]:
    """Write the raw feature copy, then measure the disk's sequential O_DIRECT read bandwidth on it."""
    p = paths(args)
    t0 = time.perf_counter()
    write_raw_copy(p)
    copy_seconds = time.perf_counter() - t0
    how = drop_page_cache([p["raw"]])
    return {"disk_read_bandwidth": disk_read_bandwidth(p["raw"]), "raw_copy_seconds": copy_seconds, "page_cache": how}


def child_json(args: argparse.Namespace, argv: list[str], what: str, log: Path) -> dict:
    figures = run_step(what, [sys.executable, __file__, *argv, "--child", what], log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {**result, "process": figures}


# -- the whole run ----------------------------------------------------------------------------


def run_steps(args: argparse.Namespace, p: dict[str, Path]) -> dict[str, dict]:
    """Run the CLI steps asked for; figures of steps kept from an earlier run come from steps.json."""
    record = p["work"] / f"steps-{p['store'].name}.json"
    results = json.loads(record.read_text()) if record.exists() and not args.redo else {}
    for step in [s for s in args.steps.split(",") if s]:
        if not args.redo and step in results and (done(step, p) or step not in ("ingest", "pack")):
            print(f"[{step}] kept from an earlier run: {record}", flush=True)
            continue
        log = p["work"] / f"{step}-{p['store'].name}.log"
        results[step] = run_step(step, step_argv(args, step, p), log)
        if step == "train":
            results[step]["result"] = json.loads(log.read_text().strip().splitlines()[-1])
        print(f"[{step}] {results[step]['seconds']:.1f} s, peak RSS {results[step]['peak_rss'] / GIB:.2f} GiB", flush=True)
        record.write_text(json.dumps(results, indent=1))
    return results


def graph_size(p: dict[str, Path]) -> dict[str, int]:
    meta = json.loads((p["store"] / "_STRATA_COMPLETE").read_text())
    return {"nodes": int(meta["num_nodes"]), "edges": int(meta["num_edges"]), "feat_dim": int(meta["feat_dim"])}


def summarise(args: argparse.Namespace, p: dict[str, Path], steps: dict, epochs: dict, disk: dict) -> tuple[dict, dict, dict]:
    """(methods, ratios, context) of the JSON report."""
    g = graph_size(p)
    budget = budgets(args, g["nodes"], g["edges"])
    full = budgets(args, FULL_NODES, int(FULL_NODES * args.avg_degree))
    methods: dict[str, dict] = {}
    ratios: dict[str, float | None] = {}
    for name, figures in steps.items():
        methods[name] = {**figures, "budget": budget[name], "budget_at_full_size": full[name]}
        ratios[f"{name}_peak_rss_over_budget"] = ratio(figures["peak_rss"], budget[name])
    methods.update(epochs)
    packed = epochs.get("packed")
    for baseline in ("memmap", "memmap_random"):
        if packed and epochs.get(baseline):
            ratios[f"{baseline}_over_packed_epoch"] = ratio(epochs[baseline]["epoch_seconds"], packed["epoch_seconds"])
    if packed and disk["disk_read_bandwidth"]:
        ratios["packed_over_disk_read_bandwidth"] = ratio(packed["read_bandwidth"], disk["disk_read_bandwidth"])
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    context = {**g, "feat_bytes": g["nodes"] * g["feat_dim"] * 4, "machine_memory": memory,
               **{k: v for k, v in disk.items() if k != "process"}}
    context["feat_over_memory"] = context["feat_bytes"] / context["machine_memory"]
    return methods, ratios, context


def print_report(methods: dict, ratios: dict, context: dict) -> None:
    print(f"\ngraph: {context['nodes']:,} nodes, {context['edges']:,} edges, features {context['feat_bytes'] / GIB:.2f} GiB "
          f"({context['feat_over_memory']:.2f}x memory); disk O_DIRECT {context['disk_read_bandwidth'] / 1e6:.0f} MB/s")
    print("| step | wall | peak RSS | budget (here / full size) | read | written |\n| --- | --- | --- | --- | --- | --- |")
    for name in STEPS:
        m = methods.get(name)
        if m:
            print(f"| {name} | {m['seconds']:.1f} s | {m['peak_rss'] / GIB:.2f} GiB | {m['budget'] / GIB:.2f} / "
                  f"{m['budget_at_full_size'] / GIB:.2f} GiB | {m['read_bytes'] / GIB:.2f} GiB | {m['write_bytes'] / GIB:.2f} GiB |")
    for name in EPOCHS:
        m = methods.get(name)
        if m:
            note = f" (extrapolated from {m['steps_timed']} of {m['steps_per_epoch']} steps)" if m["extrapolated"] else ""
            print(f"{name} epoch: {m['epoch_seconds']:.1f} s{note}, reads {m['read_bandwidth'] / 1e6:.0f} MB/s, "
                  f"data wait {m['data_wait_share']:.0%}, page cache: {m['page_cache']}")
    if "packed" in methods:
        print(f"hot-cache hit rate: {methods['packed'].get('hot_hit_rate', 0):.1%}")
    if "train" in methods and "result" in methods["train"]:
        r = methods["train"]["result"]
        majority = methods.get("packed", {}).get("test_majority_share", float("nan"))
        print(f"train: test accuracy {r['test_acc']:.3f} (majority class {majority:.3f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.child:
        result = raw_child(args) if args.child == "raw" else epoch_child(args, args.child)
        print(json.dumps(result))
        return 0
    p = paths(args)
    p["work"].mkdir(parents=True, exist_ok=True)
    steps = run_steps(args, p)
    clean = [a for a in argv if a != "--redo"]
    disk: dict = {"disk_read_bandwidth": 0.0}
    epochs: dict = {}
    if not args.no_epochs:
        disk = child_json(args, clean, "raw", p["work"] / "raw.log")
        epochs = {m: child_json(args, clean, m, p["work"] / f"epoch-{m}.log") for m in args.epochs.split(",") if m}
    methods, ratios, context = summarise(args, p, steps, epochs, disk)
    print_report(methods, ratios, context)
    publish(args, "larger_than_memory", methods, ratios, context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
