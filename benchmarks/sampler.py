"""Neighbour sampling per mini-batch: strata's torch sampler against the numpy sampler it replaced
and DGL's C++ NeighborSampler, and a mini-batch training loop on each against a bare DGL loop.

On a random graph (``--graph uniform``: about ``--avg-degree`` in-edges per node from uniform
sources; ``powerlaw``: Pareto in-degrees of exponent 2.5 with R-MAT-like skewed sources), each
method samples the same batches of ``--batch-size`` seeds with ``--fanouts``:

* ``torch``: :class:`strata.graph.sampler.TorchSampler`, the Blocks of one batch;
* ``packer``: :class:`strata.storage.featstore.sampling.NeighbourSampler` through ``sample_step``
  (the same sampler, numpy arrays out, seeded per step): what training and ``strata pack`` call;
* ``numpy_v1``: the numpy sampler of sampling.py before it (``np.setdiff1d`` / ``np.unique``
  relabelling), kept here as the baseline;
* ``dgl``: ``dgl.dataloading.NeighborSampler.sample_blocks``, DGL blocks, what a bare DGL loop calls;
* ``dgl_blocks``: :class:`strata.graph.sampler.DglSampler`, DGL's sampler with strata Blocks out.

The methods' calls are interleaved batch by batch, so all see the same load; the per-batch
median wall and CPU seconds are reported (the machine may be shared: CPU seconds are steadier).
``--train-batches N`` also runs N steps of a 2-layer GraphSAGE (mean aggregation, the same
weights and DGL's mean kernel for each) fed three ways: by strata's trainer batch source
(``SampledBatches``: ``sample_step``, the runtime's ``gather_rows``, Blocks, ``graph.ops.mean``,
``--prefetch`` batches prepared ahead on a background thread, as ``strata train`` does), by the
same with nothing ahead (``strata_sequential``), and by a bare DGL loop (``NeighborSampler``, DGL
blocks, ``dgl.ops.copy_u_mean``, all in the training thread). The loops take turns in rounds of
``--train-round`` steps, and compare seeds per second. Every loop gathers features with the
runtime's ``gather_rows``: a bare loop's ``feat[input_nodes]`` (torch advanced indexing) is
several times slower and would flatter strata.

    python benchmarks/sampler.py [--nodes 200000] [--avg-degree 10] [--fanouts 10,10] [--batch-size 1024]
                                 [--batches 40] [--train-batches 20] [--threads 1] [--json OUT]

Ratios: ``<method>_over_dgl_batch`` (median wall seconds per batch), ``..._batch_cpu_time``,
``numpy_v1_over_torch_batch``, and ``strata_over_dgl_train_samples_per_second`` and
``strata_sequential_over_dgl_train_samples_per_second`` (and ``..._per_cpu_second``), above 1
where strata's loop trains more seeds per second. The smallest useful run, a few seconds::

    python benchmarks/sampler.py --nodes 20000 --batches 5 --train-batches 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from report import add_json_flag, publish, ratio

METHODS = ("torch", "packer", "numpy_v1", "dgl", "dgl_blocks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=200_000)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--graph", choices=("uniform", "powerlaw"), default="uniform")
    p.add_argument("--fanouts", default="10,10", help="per layer, input layer first")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=40, help="timed batches per method (after one untimed)")
    p.add_argument("--train-batches", type=int, default=20, help="timed training steps per loop; 0 skips the loops")
    p.add_argument("--train-round", type=int, default=20, help="steps of one loop before the next loop's turn")
    p.add_argument("--prefetch", type=int, default=2, help="batches strata's loop prepares ahead (the trainer's default)")
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and DGL (OMP_NUM_THREADS)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


def random_csc(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of the benchmark's graph."""
    rng = np.random.default_rng(args.seed)
    n = args.nodes
    if args.graph == "uniform":
        degrees = np.bincount(rng.integers(0, n, int(n * args.avg_degree)), minlength=n)
        sources = rng.integers(0, n, int(degrees.sum()))
    else:
        shape = 1.5  # Pareto exponent 2.5, as strata's synthetic generator
        degrees = np.rint((rng.pareto(shape, n) + 1.0) * args.avg_degree * (shape - 1.0) / shape).astype(np.int64)
        degrees = np.minimum(degrees, n - 1)
        sources = rng.permutation(n)[np.minimum((rng.random(int(degrees.sum())) ** 3 * n).astype(np.int64), n - 1)]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(degrees, out=indptr[1:])
    return indptr, sources.astype(np.int64)


class NumpyV1Sampler:
    """The numpy sampler of strata.storage.featstore.sampling before the torch one (v1), as it was:
    Floyd's algorithm in numpy, new sources sorted by id through ``np.setdiff1d``."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, fanouts: list[int]) -> None:
        self.indptr, self.indices, self.fanouts = indptr, indices, fanouts

    def sample(self, seeds: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
        from strata.graph.csc import edge_ranges

        nodes, layers = np.asarray(seeds, dtype=np.int64), []
        for fanout in reversed(self.fanouts):
            starts = self.indptr[nodes]
            deg = self.indptr[nodes + 1] - starts
            take = np.minimum(deg, fanout)
            out_indptr = np.zeros(len(nodes) + 1, dtype=np.int64)
            np.cumsum(take, out=out_indptr[1:])
            edge_pos = np.empty(out_indptr[-1], dtype=np.int64)
            whole = take == deg
            edge_pos[edge_ranges(out_indptr, np.flatnonzero(whole))[1]] = edge_ranges(self.indptr, nodes[whole])[1]
            if not whole.all():
                picked = self._floyd(deg[~whole], fanout, rng)
                edge_pos[out_indptr[:-1][~whole][:, None] + np.arange(fanout)] = picked + starts[~whole][:, None]
            src_global = self.indices[edge_pos]
            src_nodes = np.concatenate([nodes, np.setdiff1d(src_global, nodes)])
            by_id = np.argsort(src_nodes, kind="stable")
            layers.insert(0, (out_indptr, by_id[np.searchsorted(src_nodes[by_id], src_global)]))
            nodes = src_nodes
        return nodes, layers

    @staticmethod
    def _floyd(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        chosen = np.empty((len(deg), k), dtype=np.int64)
        for i in range(k):
            upper = deg - k + i
            t = rng.integers(0, upper + 1)
            chosen[:, i] = np.where((chosen[:, :i] == t[:, None]).any(axis=1), upper, t)
        chosen.sort(axis=1)
        return chosen


def sample_calls(args: argparse.Namespace, indptr: np.ndarray, indices: np.ndarray, methods: list[str]) -> dict[str, Callable[[int], Any]]:
    """Per method, a call that samples batch ``i`` (the same seeds for every method)."""
    import torch

    from strata.graph.sampler import DglSampler, TorchSampler
    from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, sample_step

    fanouts = [int(f) for f in args.fanouts.split(",")]
    plan = EpochPlan(np.arange(args.nodes, dtype=np.int64), args.batch_size, args.seed)
    order = plan.order(0)
    seeds = [plan.seeds(order, i % plan.steps_per_epoch()) for i in range(args.batches + 1)]
    seed_tensors = [torch.from_numpy(s) for s in seeds]
    calls: dict[str, Callable[[int], Any]] = {}
    for method in methods:
        if method == "torch":
            sampler = TorchSampler(indptr, indices, fanouts)
            calls[method] = lambda i, s=sampler: s.sample(seed_tensors[i], torch.Generator().manual_seed(i))
        elif method == "packer":
            packer = NeighbourSampler(indptr, indices, fanouts)
            calls[method] = lambda i, s=packer: sample_step(s, plan, order, 0, i % plan.steps_per_epoch())
        elif method == "numpy_v1":
            legacy = NumpyV1Sampler(indptr, indices, fanouts)
            calls[method] = lambda i, s=legacy: s.sample(seeds[i], np.random.default_rng(i))
        elif method == "dgl":
            from strata._dgl import dgl

            graph = DglSampler(indptr, indices, fanouts).graph
            neighbour_sampler = dgl.dataloading.NeighborSampler(fanouts)
            calls[method] = lambda i, g=graph, s=neighbour_sampler: s.sample_blocks(g, seed_tensors[i])
        else:
            dgl_blocks = DglSampler(indptr, indices, fanouts)
            calls[method] = lambda i, s=dgl_blocks: s.sample(seed_tensors[i])
    return calls


def time_sampling(args: argparse.Namespace, calls: dict[str, Callable[[int], Any]]) -> dict[str, dict[str, float]]:
    """Median and best wall and CPU seconds per batch, the methods' calls interleaved."""
    wall: dict[str, list[float]] = {m: [] for m in calls}
    cpu: dict[str, list[float]] = {m: [] for m in calls}
    for i in range(args.batches + 1):
        for method, call in calls.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            call(i)
            if i:  # the first batch warms caches and thread pools
                wall[method].append(time.perf_counter() - started)
                cpu[method].append(time.process_time() - cpu_started)
    return {m: {"batch_seconds": statistics.median(wall[m]), "best_batch_seconds": min(wall[m]),
                "batch_cpu_seconds": statistics.median(cpu[m])} for m in calls}


def time_training(args: argparse.Namespace, indptr: np.ndarray, indices: np.ndarray) -> dict[str, dict[str, float]]:
    """Seeds per second of strata's mini-batch loop and a bare DGL loop, in alternating rounds.

    strata's loop is the trainer's own batch source (:class:`SampledBatches`: strata's sampler,
    the runtime's feature gather, batches prepared ``--prefetch`` ahead on a background thread);
    ``strata_sequential`` is the same with nothing ahead. The bare DGL loop samples with DGL's
    NeighborSampler and gathers with the same ``gather_rows`` in the training thread. Each round
    runs ``--train-round`` steps of one loop; a loop's background thread is joined inside its own
    round, so no loop works in another's time."""
    import torch

    from strata._dgl import dgl
    from strata.graph import ops
    from strata.graph.block import Block
    from strata.graph.sampler import DglSampler
    from strata.runtime.gnn.batches import SampledBatches, gather_rows
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.data import NodeData
    from strata.storage.featstore.sampling import EpochPlan

    fanouts = [int(f) for f in args.fanouts.split(",")]
    gen = torch.Generator().manual_seed(args.seed)
    feat = torch.randn(args.nodes, args.feat_dim, generator=gen)
    labels = torch.randint(0, 8, (args.nodes,), generator=gen)
    data = NodeData(Block.from_csc(indptr, indices, check=False), feat, labels, {"train": torch.arange(args.nodes)}, 8)
    cfg = TrainConfig(mode="minibatch", batch_size=args.batch_size, fanouts=fanouts, seed=args.seed)
    sources = {"strata": SampledBatches(data, cfg, len(fanouts), prefetch=args.prefetch),
               "strata_sequential": SampledBatches(data, cfg, len(fanouts), prefetch=0)}
    plan = EpochPlan(np.arange(args.nodes, dtype=np.int64), args.batch_size, args.seed)
    order = plan.order(0)
    dgl_graph, dgl_sampler = DglSampler(indptr, indices, fanouts).graph, dgl.dataloading.NeighborSampler(fanouts)
    loops = ("strata", "strata_sequential", "dgl")
    models = {name: sage_model(args.feat_dim, args.hidden, 8, len(fanouts), seed=args.seed) for name in loops}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}

    def strata_round(name: str, start: int, count: int) -> None:
        batches = sources[name].epoch(0, start)
        for _ in range(count):
            batch = next(batches)
            train(models[name](batch.graphs, batch.x, ops.mean), batch.y, optimizers[name])
        batches.close()  # joins the prefetch thread inside this round

    def dgl_round(name: str, start: int, count: int) -> None:
        for step in range(start, start + count):
            input_nodes, output_nodes, blocks = dgl_sampler.sample_blocks(dgl_graph, torch.from_numpy(plan.seeds(order, step)))
            x = gather_rows(feat, input_nodes.numpy())
            train(models[name](blocks, x, dgl.ops.copy_u_mean), labels[output_nodes], optimizers[name])

    rounds = {"strata": strata_round, "strata_sequential": strata_round, "dgl": dgl_round}
    for name in loops:  # untimed warm-up: allocator, thread pools, first-call costs
        rounds[name](name, 0, 1)
    seconds = {name: [0.0, 0.0] for name in loops}  # wall, CPU
    done, steps = 0, plan.steps_per_epoch()
    while done < args.train_batches:
        count = min(args.train_round, args.train_batches - done, steps - 1 - done % (steps - 1))
        start = 1 + done % (steps - 1)
        for name in loops:
            started, cpu_started = time.perf_counter(), time.process_time()
            rounds[name](name, start, count)
            seconds[name][0] += time.perf_counter() - started
            seconds[name][1] += time.process_time() - cpu_started
        done += count
    seeds = args.train_batches * args.batch_size
    return {name: {"train_seconds": wall, "samples_per_second": seeds / wall, "train_cpu_seconds": cpu,
                   "samples_per_cpu_second": seeds / cpu} for name, (wall, cpu) in seconds.items()}


def train(out: Any, labels: Any, optimizer: Any) -> None:
    import torch.nn.functional as F

    loss = F.cross_entropy(out, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def sage_model(feat_dim: int, hidden: int, classes: int, layers: int, seed: int) -> Any:
    """GraphSAGE with mean aggregation: h_v' = W_self h_v + W_neigh mean(h_u), ReLU between layers."""
    import torch
    from torch import nn

    class _Sage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            dims = [feat_dim] + [hidden] * (layers - 1) + [classes]
            self.self_linear = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
            self.neigh_linear = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))

        def forward(self, blocks: list[Any], h: Any, mean: Callable[[Any, Any], Any]) -> Any:
            for i, block in enumerate(blocks):
                num_dst = block.num_dst if hasattr(block, "indptr") else block.num_dst_nodes()
                h = self.self_linear[i](h[:num_dst]) + self.neigh_linear[i](mean(block, h))
                if i < len(blocks) - 1:
                    h = torch.relu(h)
            return h

    return _Sage()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch and DGL start their thread pools
    import torch

    from strata.graph import ops

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if ops.dgl_available() or not m.startswith("dgl")]
    indptr, indices = random_csc(args)
    print(f"{args.graph} graph: {args.nodes:,} nodes, {len(indices):,} edges; fanouts {args.fanouts}, "
          f"batch {args.batch_size}, {args.threads} thread(s)")
    figures = time_sampling(args, sample_calls(args, indptr, indices, methods))
    ratios: dict[str, float | None] = {}
    print(f"{'method':12}{'ms/batch':>10}{'best':>10}{'cpu ms':>10}{'x dgl':>8}{'x dgl cpu':>11}")
    for method, f in figures.items():
        if "dgl" in figures and method != "dgl":
            ratios[f"{method}_over_dgl_batch"] = ratio(f["batch_seconds"], figures["dgl"]["batch_seconds"])
            ratios[f"{method}_over_dgl_batch_cpu_time"] = ratio(f["batch_cpu_seconds"], figures["dgl"]["batch_cpu_seconds"])
        if "torch" in figures and method == "numpy_v1":
            ratios["numpy_v1_over_torch_batch"] = ratio(f["batch_seconds"], figures["torch"]["batch_seconds"])
        x_dgl = ratios.get(f"{method}_over_dgl_batch") or (1.0 if method == "dgl" else float("nan"))
        x_dgl_cpu = ratios.get(f"{method}_over_dgl_batch_cpu_time") or (1.0 if method == "dgl" else float("nan"))
        print(f"{method:12}{f['batch_seconds'] * 1e3:10.2f}{f['best_batch_seconds'] * 1e3:10.2f}"
              f"{f['batch_cpu_seconds'] * 1e3:10.2f}{x_dgl:8.2f}{x_dgl_cpu:11.2f}")
    if args.train_batches and ops.dgl_available():
        training = time_training(args, indptr, indices)
        for name, f in training.items():
            figures[f"{name}_train"] = f
            print(f"{name} training loop: {f['samples_per_second']:,.0f} seeds/s ({f['train_seconds']:.2f} s), "
                  f"{f['samples_per_cpu_second']:,.0f} seeds per CPU second")
        for figure in ("samples_per_second", "samples_per_cpu_second"):
            for loop in ("strata", "strata_sequential"):
                ratios[f"{loop}_over_dgl_train_{figure}"] = ratio(training[loop][figure], training["dgl"][figure])
    context = {"edges": len(indices), "torch": torch.__version__, "threads": args.threads, "load_average": os.getloadavg()}
    print()
    publish(args, "sampler", figures, ratios, context)


if __name__ == "__main__":
    main()
