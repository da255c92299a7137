"""The GNN layers strata had before its models moved onto strata.graph.ops: ``dgl.nn`` layers
(GraphConv, SAGEConv, GATConv) and DGL's update_all on DGL graphs and blocks. Tests build these
beside today's models, from the same seed, to hold the two equal: parameters, outputs and
gradients. Kept as they were (commit 50d03e2, strata/models/gnn.py), trimmed to the layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata._dgl import dgl
from strata.models.config import ModelConfig
from strata.models.gnn import Dense, Dropout, LayeredModel

fn = dgl.function
dglnn = dgl.nn.pytorch


def _dst(h: Tensor | None, graph) -> Tensor | None:
    if h is None or not graph.is_block:
        return h
    return h[: graph.num_dst_nodes()]


def _degree(graph, side: str) -> Tensor:
    data = graph.srcdata if side == "src" else graph.dstdata
    key = "out_deg" if side == "src" else "in_deg"
    if key in data:
        return data[key]
    return graph.out_degrees() if side == "src" else graph.in_degrees()


def normalized_sum(graph, h: Tensor) -> Tensor:
    src_norm = _degree(graph, "src").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
    dst_norm = _degree(graph, "dst").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
    with graph.local_scope():
        graph.srcdata["h"] = h * src_norm
        graph.update_all(fn.copy_u("h", "m"), fn.sum("m", "h"))
        return graph.dstdata["h"] * dst_norm


class GCNLayer(nn.Module):
    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = dglnn.GraphConv(in_dim, out_dim, norm="none", bias=False, allow_zero_in_degree=True)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, graph, h, h0):
        h = self.dropout(h)
        src_norm = _degree(graph, "src").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
        dst_norm = _degree(graph, "dst").to(h).clamp(min=1).pow(-0.5).unsqueeze(1)
        out = self.conv(graph, h * src_norm) * dst_norm + self.bias
        return (F.relu(out) if self.activation else out), _dst(h0, graph)


class SAGELayer(nn.Module):
    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float, activation: bool) -> None:
        super().__init__()
        self.conv = dglnn.SAGEConv(in_dim, out_dim, "mean")
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, graph, h, h0):
        h = self.dropout(h)
        out = self.conv(graph, (h, _dst(h, graph)))
        return (F.relu(out) if self.activation else out), _dst(h0, graph)


class GATLayer(nn.Module):
    uses_graph = True

    def __init__(self, in_dim: int, out_dim: int, *, heads: int, dropout: float, attn_dropout: float, last: bool) -> None:
        super().__init__()
        self.conv = dglnn.GATConv(in_dim, out_dim, heads, feat_drop=dropout, attn_drop=attn_dropout, allow_zero_in_degree=True)
        self.last = last

    def forward(self, graph, h, h0):
        out = self.conv(graph, (h, _dst(h, graph)))
        out = out.mean(1) if self.last else F.elu(out.flatten(1))
        return out, _dst(h0, graph)


class GCNIILayer(nn.Module):
    uses_graph = True

    def __init__(self, dim: int, *, layer: int, alpha: float, lambda_: float, dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.weight)
        self.alpha = alpha
        self.beta = math.log(lambda_ / layer + 1.0)
        self.dropout = Dropout(dropout)

    def forward(self, graph, h, h0):
        h0 = _dst(h0, graph)
        support = (1 - self.alpha) * normalized_sum(graph, self.dropout(h)) + self.alpha * h0
        out = (1 - self.beta) * support + self.beta * (support @ self.weight)
        return F.relu(out), h0


def build_dgl_gnn(cfg: ModelConfig, in_dim: int, num_classes: int) -> nn.Module:
    """Yesterday's build_gnn."""
    L, d, p = cfg.num_layers, cfg.hidden, cfg.dropout
    if cfg.name in ("gcn", "sage"):
        layer = GCNLayer if cfg.name == "gcn" else SAGELayer
        dims = [in_dim] + [d] * (L - 1) + [num_classes]
        return LayeredModel([layer(dims[i], dims[i + 1], dropout=p, activation=i < L - 1) for i in range(L)],
                            self_loops=cfg.name == "gcn")
    if cfg.name == "gat":
        layers, width = [], in_dim
        for i in range(L):
            last = i == L - 1
            layers.append(GATLayer(width, num_classes if last else d, heads=cfg.out_heads if last else cfg.heads,
                                   dropout=p, attn_dropout=cfg.attn_dropout, last=last))
            width = d * cfg.heads
        return LayeredModel(layers, self_loops=True)
    layers = [Dense(in_dim, d, dropout=p, activation=True, sets_h0=True)]
    layers += [GCNIILayer(d, layer=i + 1, alpha=cfg.alpha, lambda_=cfg.lambda_, dropout=p) for i in range(L)]
    layers.append(Dense(d, num_classes, dropout=p))
    return LayeredModel(layers, self_loops=True)


def run_dgl_layers(model: nn.Module, graphs, x: Tensor) -> Tensor:
    """The reference model's forward (today's run_layers takes Blocks only)."""
    blocks = list(graphs) if isinstance(graphs, (list, tuple)) else None
    h, h0 = x, None
    for layer in model.layers:
        graph = (blocks.pop(0) if layer.uses_graph else None) if blocks is not None else graphs
        h, h0 = layer(graph, h, h0)
    return h
