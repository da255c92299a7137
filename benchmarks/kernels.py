"""Forward+backward time of every graph.ops aggregation: DGL's CPU kernels against torch's sparse
CSR kernels on CPU, and torch's on CUDA where a GPU is present.

For each graph size it draws a random graph (uniform sources, about ``--avg-degree`` in-edges
per node), then, per op and kernel, times the forward and the backward (gradients of every
input, from a random probe of the output) on one Block. The first call on a fresh Block is
timed apart (``first_call_seconds``): it builds what the kernel caches on the Block (torch's
sorted CSR and its transpose, DGL's graph), a cost a full-graph run pays once and a sampled
mini-batch pays per block. Later calls are repeated, the methods' calls interleaved so that all
see the same load, and the best is what the ratios compare (the machine is shared: the best
call is the one least disturbed; the median is reported beside it). The outputs of the
kernels are compared (``max_rel_diff``, against DGL's).

    python benchmarks/kernels.py [--nodes 200000,2000000] [--dim 64] [--heads 8] [--threads 1] [--json OUT]

Methods are ``dgl_cpu``, ``torch_cpu`` and ``torch_cuda``, each with figures by nodes and op;
ratios are ``torch_cpu_over_dgl_cpu_<op>_<nodes>`` (best fwd+bwd seconds), the same with
``_first`` for the first call and ``_cpu_time`` for process CPU seconds, and
``torch_cuda_over_dgl_cpu_<op>_<nodes>`` (and ``_first``) with a GPU. The
smallest useful run, about ten seconds on 2 cores::

    python benchmarks/kernels.py --nodes 20000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from report import add_json_flag, publish, ratio

OPS = ("copy_sum", "normalized_sum", "mean", "u_add_v", "edge_softmax", "weighted_sum", "gat_aggregate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="200000,2000000", help="comma list of graph sizes")
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--dim", type=int, default=64, help="feature width of the node ops; GAT's heads x width per head")
    p.add_argument("--heads", type=int, default=8, help="attention heads of the edge ops")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and DGL (OMP_NUM_THREADS)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--methods", default="dgl_cpu,torch_cpu,torch_cuda", help="those that cannot run here are left out")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    args = p.parse_args(argv)
    unknown = set(args.ops.split(",")) - set(OPS)
    if unknown:
        p.error(f"--ops: unknown {sorted(unknown)}; choose from {', '.join(OPS)}")
    return args


def random_block(num_nodes: int, avg_degree: float, seed: int, device: str) -> Any:
    import torch

    from strata.graph.block import Block

    gen = torch.Generator().manual_seed(seed)
    num_edges = int(num_nodes * avg_degree)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(dst, minlength=num_nodes), 0, out=indptr[1:])
    indices = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return Block.from_csc(indptr, indices, check=False).to(device)


def op_inputs(op: str, block: Any, args: argparse.Namespace, gen: Any) -> tuple[Callable[..., Any], list[Any]]:
    """The op's call ``(block, *inputs, kernels=...)`` and its float32 inputs, on the Block's device."""
    import torch

    from strata.graph import ops

    n_src, n_dst, n_edges, heads = block.num_src, block.num_dst, block.num_edges, args.heads

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen).to(block.device)

    if op in ("copy_sum", "normalized_sum", "mean"):
        return getattr(ops, op), [randn(n_src, args.dim)]
    if op == "u_add_v":
        return ops.u_add_v, [randn(n_src, heads, 1), randn(n_dst, heads, 1)]
    if op == "edge_softmax":
        return ops.edge_softmax, [randn(n_edges, heads, 1)]
    feat = randn(n_src, heads, args.dim // heads)
    if op == "weighted_sum":
        return ops.weighted_sum, [feat, randn(n_edges, heads, 1)]
    return ops.gat_aggregate, [feat, randn(n_src, heads, 1), randn(n_dst, heads, 1)]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """One method's calls of one op on one fresh Block: each call's forward and backward seconds."""

    def __init__(self, op: str, kernels: str, device: str, num_nodes: int, args: argparse.Namespace) -> None:
        import torch

        self.kernels, self.device = kernels, device
        self.block = random_block(num_nodes, args.avg_degree, args.seed, device)
        self.call, self.inputs = op_inputs(op, self.block, args, torch.Generator().manual_seed(args.seed + 1))
        self.forward: list[float] = []
        self.backward: list[float] = []
        self.cpu: list[float] = []
        self.output: Any = None

    def run(self) -> None:
        import torch

        leaves = [x.detach().requires_grad_() for x in self.inputs]
        _sync(self.device)
        started, cpu_started = time.perf_counter(), time.process_time()
        out = self.call(self.block, *leaves, kernels=self.kernels)
        _sync(self.device)
        middle = time.perf_counter()
        out.backward(torch.ones_like(out))
        _sync(self.device)
        self.cpu.append(time.process_time() - cpu_started)
        self.forward.append(middle - started)
        self.backward.append(time.perf_counter() - middle)
        if self.output is None:
            self.output = out.detach().cpu()

    def figures(self) -> dict[str, float]:
        """The first call apart; of the others, the best (least disturbed by other processes on the
        machine) and the median fwd+bwd, the median of each half, and the fewest process CPU seconds
        (all threads; on a loaded machine the steadier figure for CPU kernels)."""
        totals = [f + b for f, b in zip(self.forward[1:], self.backward[1:])]
        return {
            "seconds": min(totals), "median_seconds": statistics.median(totals),
            "forward_seconds": statistics.median(self.forward[1:]), "backward_seconds": statistics.median(self.backward[1:]),
            "cpu_seconds": min(self.cpu[1:]), "first_call_seconds": self.forward[0] + self.backward[0],
        }


def time_op(op: str, methods: list[tuple[str, str, str]], num_nodes: int, args: argparse.Namespace) -> dict[str, Timer]:
    """Every method's timer for ``op``, their calls interleaved so that each method sees the same load."""
    timers = {method: Timer(op, kernels, device, num_nodes, args) for method, kernels, device in methods}
    for _ in range(1 + args.repeats):
        for timer in timers.values():
            timer.run()
    return timers


def available_methods(requested: list[str]) -> list[tuple[str, str, str]]:
    """(method, kernels, device) for each requested method that can run here."""
    import torch

    from strata.graph import ops

    found = []
    for method in requested:
        kernels, device = method.split("_")
        if kernels == "dgl" and not ops.dgl_available():
            print(f"{method}: left out, DGL does not import here", file=sys.stderr)
        elif device == "cuda" and not torch.cuda.is_available():
            print(f"{method}: left out, no CUDA device", file=sys.stderr)
        else:
            found.append((method, kernels, device))
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch and DGL start their thread pools
    import torch

    torch.set_num_threads(args.threads)
    methods = available_methods(args.methods.split(","))
    for op in OPS:  # imports, thread pools and first-use set-up, untimed
        time_op(op, methods, 1000, argparse.Namespace(**{**vars(args), "repeats": 1}))
    sizes = [int(n) for n in args.nodes.split(",")]
    figures: dict[str, dict[str, dict[str, dict[str, float]]]] = {m: {} for m, _, _ in methods}
    ratios: dict[str, float | None] = {}
    for num_nodes in sizes:
        print(f"\n{num_nodes:,} nodes, about {int(num_nodes * args.avg_degree):,} edges; seconds fwd+bwd "
              f"(best of {args.repeats}), first call in brackets")
        print(f"{'op':16}" + "".join(f"{m:>24}" for m, _, _ in methods) + "   torch_cpu/dgl_cpu (by CPU time)")
        for op in args.ops.split(","):
            timers = time_op(op, methods, num_nodes, args)
            outputs = {method: timer.output for method, timer in timers.items()}
            row = f"{op:16}"
            for method, timer in timers.items():
                result = figures[method].setdefault(str(num_nodes), {})[op] = timer.figures()
                row += f"{result['seconds']:>13.4f} ({result['first_call_seconds']:7.3f})"
            _compare(op, num_nodes, figures, outputs, ratios)
            key = f"torch_cpu_over_dgl_cpu_{op}_{num_nodes}"
            if ratios.get(key) and ratios.get(f"{key}_cpu_time"):
                row += f"   {ratios[key]:.2f}x ({ratios[f'{key}_cpu_time']:.2f}x)"
            print(row)
    context = {"avg_degree": args.avg_degree, "torch": torch.__version__, "threads": args.threads,
               "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print()
    publish(args, "kernels", figures, ratios, context)


def _compare(op: str, num_nodes: int, figures: dict, outputs: dict[str, Any], ratios: dict[str, float | None]) -> None:
    """Ratios against dgl_cpu, and each method's largest difference from its output."""
    if "dgl_cpu" not in outputs:
        return
    base = figures["dgl_cpu"][str(num_nodes)][op]
    expected = outputs["dgl_cpu"]
    scale = float(expected.abs().max()) or 1.0
    for method, out in outputs.items():
        if method == "dgl_cpu":
            continue
        mine = figures[method][str(num_nodes)][op]
        mine["max_rel_diff"] = float((out.float() - expected.float()).abs().max()) / scale
        ratios[f"{method}_over_dgl_cpu_{op}_{num_nodes}"] = ratio(mine["seconds"], base["seconds"])
        ratios[f"{method}_over_dgl_cpu_{op}_{num_nodes}_first"] = ratio(mine["first_call_seconds"], base["first_call_seconds"])
        if method.endswith("_cpu"):
            ratios[f"{method}_over_dgl_cpu_{op}_{num_nodes}_cpu_time"] = ratio(mine["cpu_seconds"], base["cpu_seconds"])


if __name__ == "__main__":
    main()
