"""GNN models as ordered lists of layers, on strata's own graph tensors.

Every layer maps ``(block, h, h0) -> (h, h0)``: ``block`` is a :class:`strata.graph.Block`
(the whole graph, a partition with its halo, a pipeline chunk or a sampled layer), ``h`` the
states of its src nodes and ``h0`` the initial residual that GCNII layers read (other layers
pass its dst rows through). Layers that ignore the graph say so with ``uses_graph = False``
and get ``None``. With one signature for all layers an executor can cut any model into
stages and run it on any Block without touching the model code.

The aggregations are :mod:`strata.graph.ops`, so the same model runs on DGL's CPU kernels or
torch's sparse kernels (CPU or CUDA), as ``STRATA_GRAPH_KERNELS`` or the device chooses.
Degree norms are the Block's (:meth:`Block.src_degrees`, :meth:`Block.dst_degrees`): a
partition or a sampled block that carries the global degrees computes exactly what
single-process training on the whole graph computes.

The layers keep the parameters (names, shapes, initialisation and its random draws) and the
arithmetic of the ``dgl.nn`` layers strata used before (GraphConv, SAGEConv, GATConv), so
checkpoints written by those models load and a seed trains the same model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.graph import ops
from strata.graph.block import Block
from strata.models.config import ModelConfig

LayerIO = tuple[Tensor, "Tensor | None"]


def _dst(h: Tensor | None, block: Block) -> Tensor | None:
    """The rows of ``h`` that are dst nodes (a Block's dst nodes come first)."""
    return None if h is None else block.dst_rows(h)


def _norm(degrees: Tensor, like: Tensor) -> Tensor:
    """deg^-1/2 (degrees clamped to at least 1) as a column for ``like``'s rows.  (rows, 1)"""
    return degrees.to(like).clamp(min=1).pow(-0.5).unsqueeze(1)


class Dropout(nn.Module):
    """Inverted dropout like ``nn.Dropout``; on CPU the mask compares uniform floats with p.

    ``nn.Dropout`` draws its CPU mask with ``bernoulli_``, about 4x slower than ``rand`` on
    one thread: in a 16-layer GCNII on Cora it was over half of the epoch. Same distribution,
    same generator (so checkpoints' RNG state still replays a run); CUDA keeps the fused kernel.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return h
        if h.is_cuda or self.p == 1.0:
            return F.dropout(h, self.p, training=True)
        keep = (torch.rand_like(h) >= self.p).to(h.dtype).mul_(1.0 / (1.0 - self.p))  # (rows, dim) of 0 or 1/(1-p)
        return h * keep


class Dense(nn.Module):
    """A per-node linear map (input projection or classifier head)."""

    uses_graph = False

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float = 0.0, activation: bool = False, sets_h0: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = Dropout(dropout)
        self.activation = activation
        self.sets_h0 = sets_h0

    def forward(self, block: Block | None, h: Tensor, h0: Tensor | None) -> LayerIO:
        h = self.linear(self.dropout(h))
        if self.activation:
            h = F.relu(h)
        return h, (h if self.sets_h0 else h0)


class GraphWeight(nn.Module):
    """GCN's weight, (in, out), Glorot-uniform: ``dgl.nn.GraphConv(norm='none', bias=False)``'s parameters."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight)


class GCNLayer(nn.Module):
    """Kipf & Welling's graph convolution, D_dst^-1/2 A D_src^-1/2 h W + b, with the Block's degrees.

    The product with W comes before the aggregation where it narrows the rows (in > out), after
    it otherwise, as in GraphConv.
    """

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = GraphWeight(in_dim, out_dim)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, block: Block, h: Tensor, h0: Tensor | None) -> LayerIO:
        h = self.dropout(h)
        weight = self.conv.weight  # (in, out)
        h = h * _norm(block.src_degrees(), h)  # (num_src, in)
        if weight.shape[0] > weight.shape[1]:
            out = ops.copy_sum(block, h @ weight)  # (num_dst, out)
        else:
            out = ops.copy_sum(block, h) @ weight
        out = out * _norm(block.dst_degrees(), out) + self.bias
        return (F.relu(out) if self.activation else out), _dst(h0, block)


class SAGEMean(nn.Module):
    """GraphSAGE-mean's projections, as ``dgl.nn.SAGEConv(aggregator_type='mean')`` holds and
    initialises them: ``fc_neigh`` (no bias) for the neighbour mean, ``fc_self`` for the node."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_self = nn.Linear(in_dim, out_dim)
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.fc_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=gain)

    def forward(self, block: Block, h: Tensor) -> Tensor:
        """fc_self(h[v]) + fc_neigh(mean of h[u] over v's in-edges).  (num_dst, out)"""
        if self.fc_neigh.in_features > self.fc_neigh.out_features:  # project first: fewer columns to aggregate
            neigh = ops.mean(block, self.fc_neigh(h))
        else:
            neigh = self.fc_neigh(ops.mean(block, h))
        return self.fc_self(block.dst_rows(h)) + neigh


class SAGELayer(nn.Module):
    """GraphSAGE with mean aggregation."""

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = SAGEMean(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, block: Block, h: Tensor, h0: Tensor | None) -> LayerIO:
        out = self.conv(block, self.dropout(h))
        return (F.relu(out) if self.activation else out), _dst(h0, block)


class GATAttention(nn.Module):
    """Multi-head graph attention with ``dgl.nn.GATConv``'s parameters and arithmetic: the src
    and the dst rows are dropped out independently and projected by ``fc``; the scores are
    leaky_relu(attn_l . Wh[u] + attn_r . Wh[v]), soft-maxed over v's in-edges.  -> (num_dst, heads, out)"""

    def __init__(self, in_dim: int, out_dim: int, heads: int, *, feat_drop: float, attn_drop: float,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.heads, self.out_dim = heads, out_dim
        self.fc = nn.Linear(in_dim, out_dim * heads, bias=False)
        self.attn_l = nn.Parameter(torch.empty(1, heads, out_dim))
        self.attn_r = nn.Parameter(torch.empty(1, heads, out_dim))
        self.feat_drop = nn.Dropout(feat_drop)
        self.attn_drop = attn_drop
        self.negative_slope = negative_slope
        self.bias = nn.Parameter(torch.empty(heads * out_dim))
        gain = nn.init.calculate_gain("relu")
        for weight in (self.fc.weight, self.attn_l, self.attn_r):
            nn.init.xavier_normal_(weight, gain=gain)
        nn.init.zeros_(self.bias)

    def forward(self, block: Block, h: Tensor) -> Tensor:
        feat_src = self.fc(self.feat_drop(h)).view(-1, self.heads, self.out_dim)  # (num_src, heads, out)
        feat_dst = self.fc(self.feat_drop(block.dst_rows(h))).view(-1, self.heads, self.out_dim)  # (num_dst, heads, out)
        score_src = (feat_src * self.attn_l).sum(-1, keepdim=True)  # (num_src, heads, 1)
        score_dst = (feat_dst * self.attn_r).sum(-1, keepdim=True)  # (num_dst, heads, 1)
        out = ops.gat_aggregate(block, feat_src, score_src, score_dst, negative_slope=self.negative_slope,
                                attn_dropout=self.attn_drop, training=self.training)
        return out + self.bias.view(1, self.heads, self.out_dim)


class GATLayer(nn.Module):
    """Graph attention; heads are concatenated (then ELU), or averaged in the last layer."""

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, heads: int, dropout: float, attn_dropout: float, last: bool) -> None:
        super().__init__()
        self.conv = GATAttention(in_dim, out_dim, heads, feat_drop=dropout, attn_drop=attn_dropout)
        self.last = last

    def forward(self, block: Block, h: Tensor, h0: Tensor | None) -> LayerIO:
        out = self.conv(block, h)  # (num_dst, heads, out_dim)
        out = out.mean(1) if self.last else F.elu(out.flatten(1))
        return out, _dst(h0, block)


class GCNIILayer(nn.Module):
    """GCNII (Chen et al., 2020): GCN aggregation with an initial residual and identity mapping.

    Same maths as ``dgl.nn.GCN2Conv`` with projected initial features, but with the Block's
    degree norms (:func:`strata.graph.ops.normalized_sum`), so a partition with global degrees
    stays exact.
    """

    uses_graph = True

    def __init__(self, dim: int, *, layer: int, alpha: float, lambda_: float, dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.weight)
        self.alpha = alpha
        self.beta = math.log(lambda_ / layer + 1.0)
        self.dropout = Dropout(dropout)

    def forward(self, block: Block, h: Tensor, h0: Tensor | None) -> LayerIO:
        if h0 is None:
            raise ValueError("GCNIILayer needs the initial residual h0; put a Dense(sets_h0=True) before it")
        h0 = block.dst_rows(h0)
        support = (1 - self.alpha) * ops.normalized_sum(block, self.dropout(h)) + self.alpha * h0  # (num_dst, dim)
        out = (1 - self.beta) * support + self.beta * (support @ self.weight)
        return F.relu(out), h0


class LayeredModel(nn.Module):
    """A model that is nothing but its ordered layers."""

    def __init__(self, layers: Sequence[nn.Module], *, self_loops: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.self_loops = self_loops
        """Whether the graph this model runs on should carry one self loop per node."""

    @property
    def num_graph_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.uses_graph)

    def forward(self, graphs: Block | Sequence[Block], x: Tensor) -> Tensor:
        """``graphs``: one Block for all layers (a full graph or a partition), or one Block per graph layer."""
        h, _ = run_layers(self.layers, graphs, x, None)
        return h


def _check_block(graph: object) -> Block:
    if not isinstance(graph, Block):
        raise TypeError(f"GNN layers compute on a strata.graph.Block, got {type(graph).__name__}; "
                        f"convert a DGL graph or block once with Block.from_dgl(graph)")
    return graph


def run_layers(layers: Sequence[nn.Module], graphs: Block | Sequence[Block] | None, h: Tensor, h0: Tensor | None) -> LayerIO:
    """Apply ``layers`` in order; a sequence of Blocks is consumed one Block per graph layer.
    ``graphs`` may be None when no layer uses the graph."""
    uses = sum(1 for layer in layers if layer.uses_graph)
    if isinstance(graphs, (list, tuple)):
        if len(graphs) != uses:
            raise ValueError(f"got {len(graphs)} blocks for {uses} graph layers")
        blocks = iter([_check_block(graph) for graph in graphs])
        for layer in layers:
            h, h0 = layer(next(blocks) if layer.uses_graph else None, h, h0)
        return h, h0
    block = _check_block(graphs) if uses else None
    for layer in layers:
        h, h0 = layer(block if layer.uses_graph else None, h, h0)
    return h, h0


def probe_block() -> Block:
    """A 2-node graph with every edge (self loops too), for running layers once to learn
    their output widths."""
    return Block.from_csc([0, 2, 4], [1, 0, 0, 1])


def build_gnn(cfg: ModelConfig, in_dim: int, num_classes: int) -> LayeredModel:
    """The model of ``cfg`` for ``in_dim`` input features and ``num_classes`` outputs."""
    L, d, p = cfg.num_layers, cfg.hidden, cfg.dropout
    if cfg.name == "gcn":
        dims = [in_dim] + [d] * (L - 1) + [num_classes]
        layers = [GCNLayer(dims[i], dims[i + 1], dropout=p, activation=i < L - 1) for i in range(L)]
        return LayeredModel(layers, self_loops=True)
    if cfg.name == "sage":
        dims = [in_dim] + [d] * (L - 1) + [num_classes]
        layers = [SAGELayer(dims[i], dims[i + 1], dropout=p, activation=i < L - 1) for i in range(L)]
        return LayeredModel(layers, self_loops=False)
    if cfg.name == "gat":
        layers = []
        width = in_dim
        for i in range(L):
            last = i == L - 1
            out = num_classes if last else d
            layers.append(
                GATLayer(width, out, heads=cfg.out_heads if last else cfg.heads, dropout=p, attn_dropout=cfg.attn_dropout, last=last)
            )
            width = d * cfg.heads
        return LayeredModel(layers, self_loops=True)
    # gcnii: input projection, L propagation layers, classifier.
    layers = [Dense(in_dim, d, dropout=p, activation=True, sets_h0=True)]
    layers += [GCNIILayer(d, layer=i + 1, alpha=cfg.alpha, lambda_=cfg.lambda_, dropout=p) for i in range(L)]
    layers.append(Dense(d, num_classes, dropout=p))
    return LayeredModel(layers, self_loops=True)
