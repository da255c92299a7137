"""GNN models as ordered lists of layers.

Every layer maps ``(graph, h, h0) -> (h, h0)``: ``graph`` is a DGLGraph over all nodes or a
sampled block, ``h`` the node states and ``h0`` the initial residual that GCNII layers read
(other layers pass it through). Layers that ignore the graph say so with ``uses_graph =
False``. With one signature for all layers an executor can cut any model into stages, run
them on a full graph, on a partition with its halo or on sampled blocks, without touching
the model code.

Degree normalisation reads ``graph.srcdata["out_deg"]`` and ``graph.dstdata["in_deg"]``
when present, so an executor that holds only a partition can supply the global degrees and
compute exactly what single-process training computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata._dgl import dgl
from strata.models.config import ModelConfig

fn = dgl.function
_dglnn = dgl.nn.pytorch

LayerIO = tuple[Tensor, "Tensor | None"]


def _dst(h: Tensor | None, graph: object) -> Tensor | None:
    """The rows of ``h`` that are destination nodes (a block's dst nodes come first)."""
    if h is None or not getattr(graph, "is_block", False):
        return h
    return h[: graph.num_dst_nodes()]  # type: ignore[attr-defined]


def _degree(graph: object, side: str) -> Tensor:
    data = graph.srcdata if side == "src" else graph.dstdata  # type: ignore[attr-defined]
    key = "out_deg" if side == "src" else "in_deg"
    if key in data:
        return data[key]
    return graph.out_degrees() if side == "src" else graph.in_degrees()  # type: ignore[attr-defined]


def normalized_sum(graph: object, h: Tensor) -> Tensor:
    """D_dst^{-1/2} A D_src^{-1/2} h, the symmetric GCN aggregation.  (num_dst, dim)"""
    src_norm = _degree(graph, "src").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
    dst_norm = _degree(graph, "dst").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
    with graph.local_scope():  # type: ignore[attr-defined]
        graph.srcdata["h"] = h * src_norm  # type: ignore[attr-defined]
        graph.update_all(fn.copy_u("h", "m"), fn.sum("m", "h"))  # type: ignore[attr-defined]
        return graph.dstdata["h"] * dst_norm  # type: ignore[attr-defined]


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

    def forward(self, graph: object, h: Tensor, h0: Tensor | None) -> LayerIO:
        h = self.linear(self.dropout(h))
        if self.activation:
            h = F.relu(h)
        return h, (h if self.sets_h0 else h0)


class GCNLayer(nn.Module):
    """Kipf & Welling's graph convolution on ``dgl.nn.GraphConv`` with explicit degree norms."""

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = _dglnn.GraphConv(in_dim, out_dim, norm="none", bias=False, allow_zero_in_degree=True)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, graph: object, h: Tensor, h0: Tensor | None) -> LayerIO:
        h = self.dropout(h)
        src_norm = _degree(graph, "src").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
        dst_norm = _degree(graph, "dst").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
        out = self.conv(graph, h * src_norm) * dst_norm + self.bias  # (num_dst, out_dim)
        return (F.relu(out) if self.activation else out), _dst(h0, graph)


class SAGELayer(nn.Module):
    """GraphSAGE with mean aggregation (``dgl.nn.SAGEConv``)."""

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = _dglnn.SAGEConv(in_dim, out_dim, "mean")
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, graph: object, h: Tensor, h0: Tensor | None) -> LayerIO:
        h = self.dropout(h)
        out = self.conv(graph, (h, _dst(h, graph)))
        return (F.relu(out) if self.activation else out), _dst(h0, graph)


class GATLayer(nn.Module):
    """Graph attention (``dgl.nn.GATConv``); heads are concatenated, or averaged in the last layer."""

    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, heads: int, dropout: float, attn_dropout: float, last: bool) -> None:
        super().__init__()
        self.conv = _dglnn.GATConv(
            in_dim, out_dim, heads, feat_drop=dropout, attn_drop=attn_dropout, allow_zero_in_degree=True
        )
        self.last = last

    def forward(self, graph: object, h: Tensor, h0: Tensor | None) -> LayerIO:
        out = self.conv(graph, (h, _dst(h, graph)))  # (num_dst, heads, out_dim)
        out = out.mean(1) if self.last else F.elu(out.flatten(1))
        return out, _dst(h0, graph)


class GCNIILayer(nn.Module):
    """GCNII (Chen et al., 2020): GCN aggregation with an initial residual and identity mapping.

    Same maths as ``dgl.nn.GCN2Conv`` with projected initial features, but with the degree
    norms of :func:`normalized_sum`, so a partition with global degrees stays exact.
    """

    uses_graph = True

    def __init__(self, dim: int, *, layer: int, alpha: float, lambda_: float, dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.weight)
        self.alpha = alpha
        self.beta = math.log(lambda_ / layer + 1.0)
        self.dropout = Dropout(dropout)

    def forward(self, graph: object, h: Tensor, h0: Tensor | None) -> LayerIO:
        if h0 is None:
            raise ValueError("GCNIILayer needs the initial residual h0; put a Dense(sets_h0=True) before it")
        h0 = _dst(h0, graph)
        support = (1 - self.alpha) * normalized_sum(graph, self.dropout(h)) + self.alpha * h0  # (num_dst, dim)
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

    def forward(self, graphs: object, x: Tensor) -> Tensor:
        """``graphs``: one graph for all layers, or a list of blocks, one per graph layer."""
        h, _ = run_layers(self.layers, graphs, x, None)
        return h


def run_layers(layers: Sequence[nn.Module], graphs: object, h: Tensor, h0: Tensor | None) -> LayerIO:
    """Apply ``layers`` in order; a list of blocks is consumed one block per graph layer."""
    blocks = list(graphs) if isinstance(graphs, (list, tuple)) else None
    if blocks is not None and len(blocks) != sum(1 for layer in layers if layer.uses_graph):
        raise ValueError(f"got {len(blocks)} blocks for {sum(1 for layer in layers if layer.uses_graph)} graph layers")
    for layer in layers:
        graph = (blocks.pop(0) if layer.uses_graph else None) if blocks is not None else graphs
        h, h0 = layer(graph, h, h0)
    return h, h0


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
