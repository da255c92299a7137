"""Streaming partitioners, LDG (Stanton & Kliot, 2012) and Fennel (Tsourakakis et al., 2014).

Nodes arrive in id order with their in-neighbours, read chunk by chunk from the store, and
each is placed in the part that scores best:

    ldg:    |P ∩ N(v)| * (1 - |P| / C)
    fennel: |P ∩ N(v)| - alpha * gamma * |P|^(gamma - 1),   alpha = sqrt(k) * E / N^gamma

under a hard capacity C = ceil((1 + slack) * N / k) on every part. Memory is O(N + chunk):
the assignment and part sizes, plus one chunk of edges.

N(v) is the in-neighbours of v as stored in the CSC. Stores of undirected graphs hold both
directions, so N(v) is the whole neighbourhood; a directed store (synthetic graphs keep
in-edges only) shows each node only its in-neighbours, and an edge u -> v pulls v towards
u's part when v arrives, never u towards v's.

``ldg`` is the one-pass algorithm of the paper (more passes restream). ``fennel`` adds two
things that matter when ids carry no locality (a random order, as in Planetoid or our
synthetic graphs), where one pass places the early nodes knowing nothing:

1. growth: the k nodes of highest in-degree seed the k parts, and passes place only nodes
   with an already placed in-neighbour, so parts grow outwards like breadth-first searches
   until a pass places fewer than 1% of the nodes;
2. restreaming (Nishimura & Ugander, 2013): up to ``passes`` more passes take every node out
   of its part and place it again with all its neighbours' parts known, until a pass moves
   fewer than ``converged`` of the nodes. The first of them also places what growth never
   reached (nodes without in-edges, small components).
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from strata.partitioners.config import PartitionConfig
from strata.partitioners.graph import GraphSource
from strata.partitioners.placement import PlacementState

DEFAULT_PASSES = {"ldg": 1, "fennel": 10}
GROWTH_STOP = 0.01
"""Growth ends after a pass that placed fewer than this share of the nodes."""
MAX_GROWTH_PASSES = 100


def ldg_assign(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    return _stream(graph, cfg, "ldg", progress)


def fennel_assign(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    return _stream(graph, cfg, "fennel", progress)


def capacity(num_nodes: int, num_parts: int, slack: float) -> int:
    """Largest part size the streaming partitioners allow."""
    return max(1, math.ceil((1.0 + slack) * num_nodes / num_parts))


def _stream(graph: GraphSource, cfg: PartitionConfig, method: str, progress: bool) -> np.ndarray:
    n = graph.num_nodes
    passes = int(cfg.passes) or DEFAULT_PASSES[method]
    placer = _Placer(n, int(cfg.num_parts), graph.num_edges, cfg, method)
    with tqdm(total=n * passes, desc=method, unit="node", unit_scale=True, disable=not progress) as bar:

        def one_pass(growing: bool) -> int:
            placed = 0
            for chunk in graph.iter_chunks(cfg.chunk_edges):
                placed += placer.place_chunk(chunk.start, chunk.indptr, chunk.indices, growing)
                bar.update(chunk.stop - chunk.start)
            return placed

        if method == "fennel" and cfg.grow:
            placer.seed(graph.indptr())
            for _ in range(MAX_GROWTH_PASSES):
                bar.total += n
                if one_pass(growing=True) < GROWTH_STOP * n:
                    break
        for done in range(passes):
            moved = one_pass(growing=False)
            if done and moved < cfg.converged * n:
                bar.total -= n * (passes - done - 1)
                break
    return placer.parts


class _Placer:
    """The state of a streaming partitioner and its scoring constants; the per-node loop is
    :func:`strata.partitioners.placement.place_run` (compiled by numba where installed)."""

    def __init__(self, n: int, k: int, num_edges: int, cfg: PartitionConfig, method: str) -> None:
        self.k = k
        self.cap = capacity(n, k, cfg.balance_slack)
        self.fennel = method == "fennel"
        self.gamma = float(cfg.gamma)
        alpha = math.sqrt(k) * max(num_edges, 1) / max(n, 1) ** self.gamma
        self.alpha_gamma = cfg.alpha_scale * alpha * self.gamma
        # fennel: the size penalty alpha*gamma*|P|^(gamma-1); ldg: the free share 1 - |P|/C.
        self.state = PlacementState(n, k, 0.0 if self.fennel else 1.0)
        # Ties go to the smaller part, then to a seeded random order of parts.
        self.order = np.random.default_rng([cfg.seed, 11]).permutation(k).astype(np.int64)

    @property
    def parts(self) -> np.ndarray:
        return self.state.assignment()

    def seed(self, indptr: np.ndarray) -> None:
        """Put the k nodes of highest in-degree into k different parts."""
        degree = np.diff(indptr)
        top = np.argsort(-degree, kind="stable")[: self.k]
        for p, v in zip(self.order.tolist(), top.tolist()):
            self.state.parts[v] = p
            self.state.resize(p, 1, self.cap, self.fennel, self.alpha_gamma, self.gamma)

    def place_chunk(self, start: int, indptr: np.ndarray, indices: np.ndarray, growing: bool) -> int:
        """Place (or, restreaming, re-place) nodes start.. of one chunk; returns how many changed part
        (newly placed ones included).

        ``growing``: skip placed nodes and leave nodes with no placed in-neighbour for later.
        """
        return self.state.run(start, indptr, indices, growing, self.order, self.cap, self.fennel, self.alpha_gamma, self.gamma)
