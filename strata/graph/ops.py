"""The aggregations GNN layers compute on a :class:`~strata.graph.block.Block`, each with autograd.

=====================  =========================================================  ============
op                     computes (over dst node v's in-edges e = (u, v))            used by
=====================  =========================================================  ============
``copy_sum``           sum of h[u]                                                 GCN
``normalized_sum``     D_dst^-1/2 A D_src^-1/2 h, degrees as the Block gives them  GCN, GCNII
``mean``               mean of h[u], 0 where v has no in-edges                     GraphSAGE
``u_add_v``            a[u] + b[v] on every edge                                    GAT scores
``edge_softmax``       softmax of edge scores over v's in-edges                    GAT
``weighted_sum``       sum of w[e] * h[u], per head                                GAT
``gat_aggregate``      GAT's attention and aggregation, with attention dropout    GAT
=====================  =========================================================  ============

Per-edge tensors are in the Block's CSC order (edge id = position in ``block.indices``).

Kernels: each op runs DGL's kernel or torch's (:mod:`~strata.graph.kernels_dgl`,
:mod:`~strata.graph.kernels_torch`), chosen per call by :func:`choose_kernels`: ``kernels=``
where the caller passes it, else the environment variable ``STRATA_GRAPH_KERNELS``
(``torch``, ``dgl`` or ``auto``, the default), read at the call. ``auto`` takes DGL's on CPU
when DGL is importable (measured 2-3x faster there, docs/benchmarks.md) and torch's on CUDA
and on CPU without DGL. Both compute the same values (tests hold them equal).

Precision: the ops run with autocast off, so a model under bf16 autocast gets its aggregations
in the dtype of the tensors it passes; inputs of different dtypes are promoted to a common one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from strata.errors import ConfigError
from strata.graph import kernels_dgl, kernels_torch
from strata.graph.block import Block

KERNELS_ENV = "STRATA_GRAPH_KERNELS"
KERNEL_CHOICES = ("auto", "torch", "dgl")


def dgl_available() -> bool:
    """Whether DGL imports here (through strata._dgl); a failed import is tried again next time."""
    if "strata._dgl" in sys.modules:
        return True
    try:
        if importlib.util.find_spec("dgl") is None:
            return False
        import strata._dgl  # noqa: F401
    except ImportError:
        return False
    return True


def choose_kernels(device: torch.device | str, kernels: str | None = None) -> str:
    """'dgl' or 'torch': the kernels an op runs on ``device``.

    ``kernels`` is 'auto', 'torch' or 'dgl'; None reads ``STRATA_GRAPH_KERNELS`` (unset or
    empty: 'auto'). A model can resolve this once per forward and pass the answer to every op.
    """
    choice = (os.environ.get(KERNELS_ENV, "") if kernels is None else kernels).strip().lower() or "auto"
    where = f"{KERNELS_ENV}={choice}" if kernels is None else f"kernels='{choice}'"
    if choice not in KERNEL_CHOICES:
        raise ConfigError(f"{where}: graph kernels must be one of {', '.join(KERNEL_CHOICES)}")
    device_type = torch.device(device).type
    if choice == "auto":
        return "dgl" if device_type == "cpu" and dgl_available() else "torch"
    if choice == "dgl":
        if device_type != "cpu":
            raise ConfigError(f"{where}, but the tensors are on {device_type}: DGL's PyPI build runs on CPU only; "
                              f"use 'torch' or 'auto' there")
        if not dgl_available():
            raise ConfigError(f"{where}, but DGL does not import here: install dgl==2.1.0, or use 'torch' or 'auto'")
    return choice


def _kernels(device: torch.device, kernels: str | None) -> ModuleType:
    return kernels_dgl if choose_kernels(device, kernels) == "dgl" else kernels_torch


def _check(block: Block, tensor: Tensor, name: str, rows: int, what: str) -> None:
    if tensor.device != block.device:
        raise ValueError(f"{name} is on {tensor.device} but the Block is on {block.device}: move one with .to(device)")
    if tensor.dim() == 0 or tensor.shape[0] != rows:
        raise ValueError(f"{name} must have one row per {what} ({rows}), got shape {tuple(tensor.shape)}")


def _2d(tensor: Tensor, rows: int) -> Tensor:
    """(rows, ...) as (rows, features); unlike reshape(rows, -1), also for 0 rows."""
    return tensor.reshape(rows, math.prod(tensor.shape[1:]))


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off for the kernels; entered only where it is on (entering costs 10 us a call)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def copy_sum(block: Block, h: Tensor, *, kernels: str | None = None) -> Tensor:
    """out[v] = sum of h[u] over v's in-edges (u, v).  h (num_src, ...) -> (num_dst, ...)"""
    _check(block, h, "h", block.num_src, "src node")
    with _no_autocast(h.device):
        out = _kernels(h.device, kernels).copy_sum(block, _2d(h, block.num_src))
    return out.reshape(block.num_dst, *h.shape[1:])


def mean(block: Block, h: Tensor, *, kernels: str | None = None) -> Tensor:
    """The mean of h[u] over v's in-edges in this Block; 0 where v has none.  (num_dst, ...)"""
    _check(block, h, "h", block.num_src, "src node")
    with _no_autocast(h.device):
        out = _kernels(h.device, kernels).mean(block, _2d(h, block.num_src))
    return out.reshape(block.num_dst, *h.shape[1:])


def normalized_sum(block: Block, h: Tensor, *, kernels: str | None = None) -> Tensor:
    """D_dst^-1/2 A D_src^-1/2 h, the symmetric GCN aggregation, with the Block's degrees
    (its global ones where it carries them), each clamped to at least 1.  (num_dst, ...)"""
    _check(block, h, "h", block.num_src, "src node")
    ones = (1,) * (h.dim() - 1)
    src_norm = block.src_degrees().to(h).clamp(min=1).pow(-0.5).reshape(-1, *ones)  # (num_src, 1, ...)
    dst_norm = block.dst_degrees().to(h).clamp(min=1).pow(-0.5).reshape(-1, *ones)  # (num_dst, 1, ...)
    return copy_sum(block, h * src_norm, kernels=kernels) * dst_norm


def u_add_v(block: Block, src_values: Tensor, dst_values: Tensor, *, kernels: str | None = None) -> Tensor:
    """src_values[u] + dst_values[v] on every edge (u, v).  (num_src, ...), (num_dst, ...) -> (E, ...)"""
    _check(block, src_values, "src_values", block.num_src, "src node")
    _check(block, dst_values, "dst_values", block.num_dst, "dst node")
    if src_values.shape[1:] != dst_values.shape[1:]:
        raise ValueError(f"src_values {tuple(src_values.shape)} and dst_values {tuple(dst_values.shape)} must agree "
                         f"past their first dimension")
    dtype = torch.promote_types(src_values.dtype, dst_values.dtype)
    with _no_autocast(src_values.device):
        out = _kernels(src_values.device, kernels).u_add_v(
            block, _2d(src_values, block.num_src).to(dtype), _2d(dst_values, block.num_dst).to(dtype))
    return out.reshape(block.num_edges, *src_values.shape[1:])


def edge_softmax(block: Block, scores: Tensor, *, kernels: str | None = None) -> Tensor:
    """The softmax of each edge's ``scores`` over its dst node's in-edges.  (E, ...) -> (E, ...)"""
    _check(block, scores, "scores", block.num_edges, "edge")
    with _no_autocast(scores.device):
        out = _kernels(scores.device, kernels).edge_softmax(block, _2d(scores, block.num_edges))
    return out.reshape(scores.shape)


def weighted_sum(block: Block, h: Tensor, weights: Tensor, *, kernels: str | None = None) -> Tensor:
    """out[v] = sum of weights[e] * h[u] over v's in-edges e = (u, v), per head.

    h (num_src, D) with weights (E,) or (E, 1); or h (num_src, H, D) with weights (E, H) or
    (E, H, 1).  -> (num_dst, *h.shape[1:])
    """
    _check(block, h, "h", block.num_src, "src node")
    _check(block, weights, "weights", block.num_edges, "edge")
    heads = 1 if h.dim() == 2 else h.shape[1]
    if h.dim() not in (2, 3) or weights.numel() != block.num_edges * heads:
        raise ValueError(f"weights must hold one value per edge and head: h {tuple(h.shape)} has {heads} head(s), "
                         f"weights has shape {tuple(weights.shape)} for {block.num_edges} edges")
    dtype = torch.promote_types(h.dtype, weights.dtype)
    with _no_autocast(h.device):
        out = _kernels(h.device, kernels).weighted_sum(
            block, h.reshape(block.num_src, heads, h.shape[-1]).to(dtype), weights.reshape(block.num_edges, heads).to(dtype))
    return out.reshape(block.num_dst, *h.shape[1:])


def gat_aggregate(
    block: Block, feat_src: Tensor, score_src: Tensor, score_dst: Tensor, *,
    negative_slope: float = 0.2, attn_dropout: float = 0.0, training: bool = False, kernels: str | None = None,
) -> Tensor:
    """GAT's attention and aggregation, as ``dgl.nn.GATConv`` computes them after its projections:
    e = leaky_relu(score_src[u] + score_dst[v]), a = dropout(edge_softmax(e)), out[v] = sum of a * feat_src[u].

    feat_src (num_src, H, D); score_src (num_src, H) or (num_src, H, 1); score_dst likewise for
    the dst nodes.  -> (num_dst, H, D). The dropout draws from torch's generator, the same draws
    for either kernel.
    """
    kind = choose_kernels(feat_src.device, kernels)  # once for the three ops
    scores = F.leaky_relu(u_add_v(block, score_src, score_dst, kernels=kind), negative_slope)  # (E, H[, 1])
    attention = F.dropout(edge_softmax(block, scores, kernels=kind), attn_dropout, training)
    return weighted_sum(block, feat_src, attention, kernels=kind)
