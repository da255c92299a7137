"""Neighbour sampling over int32 src ids against int64: the same batches, in the same time?

``strata train`` runs that only sample (packed and cached features, scored by the sampled
evaluation) hold the whole graph's src ids as int32 (:mod:`strata.storage.compact`): 4 bytes an
edge instead of 8, 2 GiB less at 64M nodes and 514M edges. The sampler gathers the sampled
edges' src ids with ``index_select`` from that array and widens only those. This benchmark
samples the same batches (``sample_step``, seeded per step) from both arrays over a random
graph of ``--nodes`` nodes with R-MAT-like skewed sources, the two calls interleaved batch by
batch so both see the same load, checks the batches are equal, and reports the median wall and
CPU seconds per batch and the bytes of each graph's src ids.

    python benchmarks/compact_sampling.py [--nodes 2000000] [--avg-degree 8] [--fanouts 10,5]
                                          [--batch-size 1024] [--batches 20] [--json OUT]

Ratio: ``int32_over_int64_batch`` (median wall seconds per batch; below 1: int32 is faster) and
``int32_over_int64_batch_cpu_time``, and ``int32_over_int64_index_bytes`` (0.5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from report import add_json_flag, publish, ratio

from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, sample_step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--avg-degree", type=float, default=8.0)
    p.add_argument("--fanouts", default="10,5", help="per layer, input layer first")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=20, help="timed batches per method (after one untimed)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    return p.parse_args(argv)


def random_csc(nodes: int, avg_degree: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """In-edges grouped by destination: uniform destinations, sources skewed towards low ids
    (a squared uniform, a stand-in for R-MAT's hubs)."""
    rng = np.random.default_rng(seed)
    edges = int(nodes * avg_degree)
    dst = np.sort(rng.integers(0, nodes, edges))
    src = (rng.random(edges) ** 2 * nodes).astype(np.int64)
    return np.searchsorted(dst, np.arange(nodes + 1)).astype(np.int64), src


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    indptr, wide = random_csc(args.nodes, args.avg_degree, args.seed)
    narrow = wide.astype(np.int32)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    samplers = {"int64": NeighbourSampler(indptr, wide, fanouts), "int32": NeighbourSampler(indptr, narrow, fanouts)}
    plan = EpochPlan(np.arange(args.nodes, dtype=np.int64), args.batch_size, args.seed)
    order = plan.order(0)
    wall: dict[str, list[float]] = {name: [] for name in samplers}
    cpu: dict[str, list[float]] = {name: [] for name in samplers}
    for step in range(args.batches + 1):
        batches = {}
        for name, sampler in (samplers.items() if step % 2 else reversed(samplers.items())):  # alternate who goes first
            t0, c0 = time.perf_counter(), time.process_time()
            batches[name] = sample_step(sampler, plan, order, 0, step)
            if step:  # the first batch of each is untimed (node maps allocated, caches warm)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        a, b = batches["int64"], batches["int32"]
        if not (np.array_equal(a.input_nodes, b.input_nodes)
                and all(np.array_equal(x.indices, y.indices) and np.array_equal(x.indptr, y.indptr) for x, y in zip(a.layers, b.layers))):
            raise SystemExit(f"step {step}: int32 src ids sampled another batch than int64")
    methods = {name: {"batch_seconds": statistics.median(wall[name]), "batch_cpu_seconds": statistics.median(cpu[name]),
                      "index_bytes": samplers[name].indices.nbytes} for name in samplers}
    for name, m in methods.items():
        print(f"{name}: {m['batch_seconds'] * 1e3:.1f} ms a batch (cpu {m['batch_cpu_seconds'] * 1e3:.1f} ms), "
              f"src ids {m['index_bytes'] / 2**20:.0f} MiB")
    ratios = {
        "int32_over_int64_batch": ratio(methods["int32"]["batch_seconds"], methods["int64"]["batch_seconds"]),
        "int32_over_int64_batch_cpu_time": ratio(methods["int32"]["batch_cpu_seconds"], methods["int64"]["batch_cpu_seconds"]),
        "int32_over_int64_index_bytes": ratio(methods["int32"]["index_bytes"], methods["int64"]["index_bytes"]),
    }
    publish(args, "compact_sampling", methods, ratios, {"nodes": args.nodes, "edges": len(wide), "identical_batches": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
