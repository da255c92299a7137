"""torch's kernels behind graph.ops: sparse CSR products (MKL on CPU, cuSPARSE on CUDA) and
segment reductions, each with its own backward, for any device.

Aggregations are products with the Block's adjacency A (num_dst x num_src): the forward with A
in CSR, the backward with its transpose, both built once per Block (:class:`SparsePlan`, cached
on it). MKL and cuSPARSE assume each row's column indices sorted and unique, which a Block's CSC
need not be (unsorted rows, multi-edges), so the plan holds one entry per distinct (dst, src)
pair, its multiplicity, and the map between edges and entries: per-edge values (attention) are
summed into their entry for the products, and per-entry results are read back for every edge.
Edge-wise reductions (edge softmax, the backward of u_add_v) are segment reductions over the
CSC (edges grouped by dst) and over the Block's transposed CSR (edges grouped by src).

Precision: the sparse products have no 16-bit CPU kernel, so 16-bit inputs are computed in
float32 and the result cast back to the input's dtype; everything runs with autocast off, in
the forward and in the backward (which may run inside the caller's autocast region).

Every function takes 2-D tensors (rows, features); :mod:`strata.graph.ops` reshapes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from strata.graph.block import Block


@dataclass(frozen=True)
class SparsePlan:
    """A Block's adjacency as sorted, unique CSR entries for torch's sparse kernels."""

    num_src: int
    num_dst: int
    crow: Tensor  # (num_dst + 1,) int64 over entries
    col: Tensor  # (U,) int64 src id of each entry, ascending within a row
    multiplicity: Tensor  # (U,) int64 edges in each entry
    t_crow: Tensor  # (num_src + 1,) int64: the transpose, rows are src nodes
    t_col: Tensor  # (U,) int64 dst id of each transposed entry, ascending within a row
    t_entry: Tensor  # (U,) int64 the entry of each transposed entry
    edge_order: Tensor | None  # (E,) CSC edge ids sorted by (dst, src); None where the CSC is sorted already
    entry_offsets: Tensor | None  # (U + 1,) runs of edge_order that form one entry; None without multi-edges
    edge_entry: Tensor | None  # (E,) the entry of each edge; None where entries are the edges, in CSC order

    def to_entries(self, values: Tensor) -> Tensor:
        """Per-edge values (E, F) summed into their entries.  (U, F)"""
        if self.edge_order is not None:
            values = values.index_select(0, self.edge_order)
        if self.entry_offsets is not None:
            values = torch.segment_reduce(values, "sum", offsets=self.entry_offsets, axis=0, unsafe=True)
        return values

    def to_edges(self, values: Tensor) -> Tensor:
        """Per-entry values (U, F) read back for every edge.  (E, F)"""
        return values if self.edge_entry is None else values.index_select(0, self.edge_entry)


def sparse_plan(block: Block) -> SparsePlan:
    """The Block's :class:`SparsePlan`, built on first use and cached on the Block."""
    return block.cached("torch_sparse_plan", lambda: _build_plan(block))


def _build_plan(block: Block) -> SparsePlan:
    num_src, num_dst, num_edges, device = block.num_src, block.num_dst, block.num_edges, block.device
    key = block.edge_dst() * num_src + block.indices  # (E,) row-major position of each edge
    order: Tensor | None = None
    if num_edges > 1 and not bool((key[1:] > key[:-1]).all()):
        key, order = torch.sort(key, stable=True)
    first = torch.ones(num_edges, dtype=torch.bool, device=device)  # (E,) starts a new entry, in sorted order
    first[1:] = key[1:] != key[:-1]
    entry_offsets = edge_entry = None
    if bool(first.all()):
        entry_key, multiplicity = key, torch.ones(num_edges, dtype=torch.int64, device=device)
        if order is not None:
            edge_entry = torch.empty_like(order)
            edge_entry[order] = torch.arange(num_edges, device=device)
    else:
        starts = first.nonzero().squeeze(1)  # (U,) first sorted edge of each entry
        entry_offsets = torch.cat([starts, torch.tensor([num_edges], device=device)])
        entry_key, multiplicity = key[starts], entry_offsets.diff()
        sorted_entry = torch.cumsum(first, 0) - 1  # (E,) entry of each edge in sorted order
        edge_entry = torch.empty_like(sorted_entry)
        edge_entry[torch.arange(num_edges, device=device) if order is None else order] = sorted_entry
    col = entry_key % num_src if num_src else entry_key
    crow = _offsets(entry_key // max(num_src, 1), num_dst)
    # The transpose from the Block's transposed CSR: its edges are sorted by (src, dst), so the
    # edges of one entry are neighbours there and the first of each run stands for the entry.
    t = block.transposed()
    t_entry = t.edge_ids if edge_entry is None else edge_entry[t.edge_ids]
    if entry_offsets is not None:
        t_first = torch.ones(num_edges, dtype=torch.bool, device=device)
        t_first[1:] = t_entry[1:] != t_entry[:-1]
        t_entry, t_col = t_entry[t_first], t.indices[t_first]
    else:
        t_col = t.indices
    return SparsePlan(
        num_src, num_dst, crow, col, multiplicity, _offsets(col, num_src), t_col, t_entry, order, entry_offsets, edge_entry,
    )


def _offsets(rows: Tensor, num_rows: int) -> Tensor:
    """The CSR row pointer of entries whose (sorted) row ids are ``rows``.  (num_rows + 1,)"""
    out = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=num_rows), 0, out=out[1:])
    return out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sparse products run in: float32 for 16-bit floats, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _spend_the_beta_warning() -> None:
    """torch warns once per process, at the first sparse CSR tensor, that CSR support is "beta".
    The kernels here are tested against DGL's, so the warning is spent here, at import (one
    thread), on a 1x1 matrix, rather than shown to a user or filtered at every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        _csr(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), (1, 1))


_spend_the_beta_warning()


def _spmm(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int], dense: Tensor) -> Tensor:
    """CSR (size) @ dense (size[1], F).  (size[0], F)"""
    return _csr(crow, col, values, size) @ dense.contiguous()


def _sddmm(plan: SparsePlan, left: Tensor, right: Tensor) -> Tensor:
    """left[dst] . right[src] at every entry: left (num_dst, F), right (num_src, F).  (U,)"""
    pattern = _csr(plan.crow, plan.col, torch.ones(len(plan.col), dtype=left.dtype, device=left.device), (plan.num_dst, plan.num_src))
    return torch.sparse.sampled_addmm(pattern, left.contiguous(), right.t(), beta=0.0).values()


def _forward_product(plan: SparsePlan, values: Tensor, dense: Tensor) -> Tensor:
    """A @ dense with A's entries ``values`` (U,).  (num_dst, F)"""
    return _spmm(plan.crow, plan.col, values, (plan.num_dst, plan.num_src), dense)


def _backward_product(plan: SparsePlan, values: Tensor, dense: Tensor) -> Tensor:
    """A^T @ dense with A's entries ``values`` (U,), through the transposed CSR.  (num_src, F)"""
    return _spmm(plan.t_crow, plan.t_col, values.index_select(0, plan.t_entry), (plan.num_src, plan.num_dst), dense)


class _CopySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, plan: SparsePlan, h: Tensor) -> Tensor:
        ctx.plan = plan
        return _forward_product(plan, plan.multiplicity.to(h.dtype), h)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[None, Tensor]:
        plan = ctx.plan
        with torch.autocast(grad.device.type, enabled=False):
            return None, _backward_product(plan, plan.multiplicity.to(grad.dtype), grad)


class _WeightedSum(torch.autograd.Function):
    """out[:, k] = A_k @ h[:, k] per head k, A_k holding the weights of head k."""

    @staticmethod
    def forward(ctx: FunctionCtx, plan: SparsePlan, h: Tensor, weights: Tensor) -> Tensor:
        ctx.plan = plan
        entry_weights = plan.to_entries(weights)  # (U, H)
        ctx.save_for_backward(h, entry_weights)
        heads = [_forward_product(plan, entry_weights[:, k].contiguous(), h[:, k]) for k in range(h.shape[1])]
        return torch.stack(heads, dim=1)  # (num_dst, H, D)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None]:
        plan = ctx.plan
        h, entry_weights = ctx.saved_tensors
        grad_h = grad_w = None
        with torch.autocast(grad.device.type, enabled=False):
            heads = range(h.shape[1])
            if ctx.needs_input_grad[1]:
                grad_h = torch.stack([_backward_product(plan, entry_weights[:, k], grad[:, k]) for k in heads], dim=1)
            if ctx.needs_input_grad[2]:
                # d out[v] / d w[e] = h[src(e)], so each edge's gradient is grad[dst] . h[src].
                grad_w = plan.to_edges(torch.stack([_sddmm(plan, grad[:, k], h[:, k]) for k in heads], dim=1))
        return None, grad_h, grad_w


def _segment_sum(values: Tensor, offsets: Tensor) -> Tensor:
    return torch.segment_reduce(values, "sum", offsets=offsets, axis=0, unsafe=True)


class _EdgeSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, block: Block, scores: Tensor) -> Tensor:
        dst = block.edge_dst()
        top = torch.segment_reduce(scores, "max", offsets=block.indptr, axis=0, unsafe=True)  # (num_dst, F)
        exp = (scores - top.index_select(0, dst)).exp_()  # (E, F)
        attention = exp.div_(_segment_sum(exp, block.indptr).index_select(0, dst))
        ctx.block = block
        ctx.save_for_backward(attention)
        return attention

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[None, Tensor]:
        (attention,) = ctx.saved_tensors
        block = ctx.block
        with torch.autocast(grad.device.type, enabled=False):
            weighted = grad * attention  # (E, F)
            return None, weighted - attention * _segment_sum(weighted, block.indptr).index_select(0, block.edge_dst())


class _UAddV(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, block: Block, src_values: Tensor, dst_values: Tensor) -> Tensor:
        ctx.block = block
        return src_values.index_select(0, block.indices).add_(dst_values.index_select(0, block.edge_dst()))

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None]:
        block = ctx.block
        grad_src = grad_dst = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                # Each src node's out-edges, as a product with the (num_src, E) matrix that picks them:
                # the transposed CSR's rows, whose edge ids ascend within a row (sorted, unique).
                t = block.transposed()
                pick = torch.ones(block.num_edges, dtype=grad.dtype, device=grad.device)
                grad_src = _spmm(t.indptr, t.edge_ids, pick, (block.num_src, block.num_edges), grad)  # (num_src, F)
            if ctx.needs_input_grad[2]:
                grad_dst = _segment_sum(grad, block.indptr)  # (num_dst, F) over each dst node's in-edges
        return None, grad_src, grad_dst


def _in_compute_dtype(*tensors: Tensor) -> list[Tensor]:
    return [t.to(compute_dtype(t.dtype)) for t in tensors]


def copy_sum(block: Block, h: Tensor) -> Tensor:
    """out[v] = sum of h[u] over v's in-edges (u, v).  h (num_src, F) -> (num_dst, F)"""
    (x,) = _in_compute_dtype(h)
    return _CopySum.apply(sparse_plan(block), x).to(h.dtype)


def mean(block: Block, h: Tensor) -> Tensor:
    """The mean of h[u] over v's in-edges; 0 where v has none.  (num_dst, F)"""
    return copy_sum(block, h) / block.local_in_degrees().clamp(min=1).to(h.dtype).unsqueeze(1)


def weighted_sum(block: Block, h: Tensor, weights: Tensor) -> Tensor:
    """out[v, k] = sum of weights[e, k] * h[u, k] over v's in-edges e = (u, v).
    h (num_src, H, D), weights (E, H) -> (num_dst, H, D)"""
    x, w = _in_compute_dtype(h, weights)
    return _WeightedSum.apply(sparse_plan(block), x, w).to(h.dtype)


def edge_softmax(block: Block, scores: Tensor) -> Tensor:
    """The softmax of ``scores`` over each dst node's in-edges.  scores (E, F) -> (E, F)"""
    (x,) = _in_compute_dtype(scores)
    return _EdgeSoftmax.apply(block, x).to(scores.dtype)


def u_add_v(block: Block, src_values: Tensor, dst_values: Tensor) -> Tensor:
    """src_values[u] + dst_values[v] on every edge (u, v).  (num_src, F), (num_dst, F) -> (E, F)"""
    x, y = _in_compute_dtype(src_values, dst_values)
    return _UAddV.apply(block, x, y).to(src_values.dtype)
