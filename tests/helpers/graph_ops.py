"""The cases of the graph.ops tests: for each op, its inputs, the call, and a dense reference
that computes the same thing edge by edge with index_add (autograd included), in float64."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from strata.graph import ops
from strata.graph.block import Block

HEADS, WIDTH = 3, 5


def _edge_sum(block: Block, values: Tensor) -> Tensor:
    """Per-edge values summed at each edge's dst node.  (num_dst, ...)"""
    out = torch.zeros((block.num_dst, *values.shape[1:]), dtype=values.dtype)
    return out.index_add(0, block.edge_dst().cpu(), values)


def _ref_copy_sum(block: Block, h: Tensor) -> Tensor:
    return _edge_sum(block, h[block.indices.cpu()])


def _ref_mean(block: Block, h: Tensor) -> Tensor:
    deg = block.local_in_degrees().cpu().clamp(min=1).to(h.dtype)
    return _ref_copy_sum(block, h) / deg.reshape(-1, *(1,) * (h.dim() - 1))


def _ref_normalized_sum(block: Block, h: Tensor) -> Tensor:
    src = block.src_degrees().cpu().to(h.dtype).clamp(min=1).pow(-0.5).unsqueeze(1)
    dst = block.dst_degrees().cpu().to(h.dtype).clamp(min=1).pow(-0.5).unsqueeze(1)
    return _ref_copy_sum(block, h * src) * dst


def _ref_u_add_v(block: Block, a: Tensor, b: Tensor) -> Tensor:
    return a[block.indices.cpu()] + b[block.edge_dst().cpu()]


def _ref_edge_softmax(block: Block, scores: Tensor) -> Tensor:
    exp = scores.exp()
    return exp / _edge_sum(block, exp)[block.edge_dst().cpu()]


def _ref_weighted_sum(block: Block, h: Tensor, w: Tensor) -> Tensor:
    messages = h[block.indices.cpu()] * w.reshape(block.num_edges, *h.shape[1:-1], 1)
    return _edge_sum(block, messages)


def _ref_gat(block: Block, feat: Tensor, el: Tensor, er: Tensor) -> Tensor:
    attention = _ref_edge_softmax(block, F.leaky_relu(_ref_u_add_v(block, el, er), 0.2))
    return _ref_weighted_sum(block, feat, attention)


@dataclass(frozen=True)
class OpCase:
    name: str
    inputs: Callable[[Block, torch.Generator], tuple[Tensor, ...]]
    """float32 CPU inputs for a Block."""
    call: Callable[..., Tensor]
    """(block, *inputs, kernels=...) -> output"""
    reference: Callable[..., Tensor]
    """(block, *float64 inputs) -> output, on CPU"""
    dropout: bool = False
    """Whether the call draws random numbers (the reference then has no dropout; see reference_call)."""


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen)


CASES = [
    OpCase("copy_sum", lambda b, g: (_randn(g, b.num_src, 16),), ops.copy_sum, _ref_copy_sum),
    OpCase("mean", lambda b, g: (_randn(g, b.num_src, 16),), ops.mean, _ref_mean),
    OpCase("normalized_sum", lambda b, g: (_randn(g, b.num_src, HEADS, WIDTH),), ops.normalized_sum,
           lambda b, h: _ref_normalized_sum(b, h.flatten(1)).reshape(b.num_dst, HEADS, WIDTH)),
    OpCase("u_add_v", lambda b, g: (_randn(g, b.num_src, HEADS, 1), _randn(g, b.num_dst, HEADS, 1)), ops.u_add_v, _ref_u_add_v),
    OpCase("edge_softmax", lambda b, g: (_randn(g, b.num_edges, HEADS, 1),), ops.edge_softmax, _ref_edge_softmax),
    OpCase("weighted_sum", lambda b, g: (_randn(g, b.num_src, HEADS, WIDTH), _randn(g, b.num_edges, HEADS, 1)),
           ops.weighted_sum, _ref_weighted_sum),
    OpCase("weighted_sum_one_head", lambda b, g: (_randn(g, b.num_src, WIDTH), _randn(g, b.num_edges)),
           ops.weighted_sum, _ref_weighted_sum),
    OpCase("gat_aggregate",
           lambda b, g: (_randn(g, b.num_src, HEADS, WIDTH), _randn(g, b.num_src, HEADS, 1), _randn(g, b.num_dst, HEADS, 1)),
           lambda b, *x, kernels: ops.gat_aggregate(b, *x, attn_dropout=0.3, training=True, kernels=kernels),
           _ref_gat, dropout=True),
]
CASE_IDS = [case.name for case in CASES]


def run_case(case: OpCase, block: Block, inputs: tuple[Tensor, ...], *, kernels: str | None, dropout: bool = True,
             seed: int = 7) -> list[Tensor]:
    """The output and the gradient of every input (of sum(output * a fixed probe)), detached."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    torch.manual_seed(seed)  # the same dropout draws for every kernel
    if case.dropout and not dropout:
        out = ops.gat_aggregate(block, *leaves, training=False, kernels=kernels)
    else:
        out = case.call(block, *leaves, kernels=kernels)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(out)
    (out * probe).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves]


def reference_case(case: OpCase, block: Block, inputs: tuple[Tensor, ...], seed: int = 7) -> list[Tensor]:
    """As run_case, from the dense float64 reference (without dropout)."""
    cpu = block.to("cpu")
    leaves = [x.detach().cpu().double().requires_grad_() for x in inputs]
    out = case.reference(cpu, *leaves)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
    (out * probe).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves]


def assert_rel_close(actual: list[Tensor], expected: list[Tensor], rel: float = 1e-5, what: str = "") -> None:
    """Each tensor equal to rel times the largest magnitude of its expected tensor (rel 1e-5:
    float32 sums taken in another order)."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what} tensor {i}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        scale = float(e.detach().abs().max()) if e.numel() else 1.0
        torch.testing.assert_close(a.detach().cpu().double(), e.detach().cpu().double(), rtol=rel, atol=rel * max(scale, 1e-12),
                                   msg=lambda m, i=i: f"{what} tensor {i} (0 = output, then input gradients): {m}")
