"""Uniform neighbour sampling over a CSC into :class:`~strata.graph.block.Block` s.

For each destination node, a layer takes ``min(fanout, degree)`` of its in-edges, chosen
uniformly without replacement (every ``fanout``-subset equally likely, so each in-edge is in
with probability ``fanout / degree``; ``-1`` takes them all), layer by layer from the seeds
down to the input nodes. Two samplers draw from this same distribution (a test holds them to
it and to each other):

* :class:`TorchSampler`, strata's: vectorised torch, no Python loop over nodes, on CPU or CUDA
  tensors. Its draws come only from the ``torch.Generator`` passed to :meth:`~TorchSampler.sample`,
  so a batch is a pure function of (graph, seeds, generator state): seeded from (seed, epoch,
  step), the offline packer and the trainer get the same neighbours in any thread or process.
  The random numbers are drawn on the generator's device: a CPU generator gives the same
  neighbours whatever the device of the graph (the draws, a few per sampled node, are copied
  over); a CUDA generator keeps them on the GPU but gives other neighbours than a CPU one.
* :class:`DglSampler`: DGL's C++ sampler (``dgl.sampling.sample_neighbors`` and
  ``dgl.to_block``), CPU only, where DGL is installed. DGL draws from its own global generator,
  seeded per OpenMP thread with ``seed + a per-process thread counter``: with more than one
  thread, from a prefetch thread or in another process the same seed gives other neighbours.
  Use it only where no one needs the batch again (a single-process online run that is not
  resumed, benchmarks, tests of the distribution), never for packing or for runs that must be
  reproduced; :func:`make_sampler` therefore takes the torch sampler unless asked.

Both keep DGL's block convention: a layer's dst nodes are the first of its src nodes, and the
src nodes of a layer are the dst nodes of the layer below it, so one id array,
:attr:`SampledBlocks.input_nodes`, serves all layers (each Block's ``src_ids`` and ``dst_ids``
are prefixes of it). New src nodes follow the dst nodes in the order they first appear among the
sampled edges (DGL's ``to_block`` order too), and a dst node's sampled in-edges keep their CSC order.

Relabelling global ids to local ones (the cost that dominated a numpy sampler built on
``np.unique``) is a scatter into a map of one int32 per graph node, reused across batches and
layers: see :meth:`TorchSampler._relabel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from strata.graph.block import Block

ABSENT = torch.iinfo(torch.int32).min
"""The node map's value for a node not (yet) in the batch; below every code a scatter writes."""
BACKENDS = ("torch", "dgl")


@dataclass
class SampledBlocks:
    """The sampled neighbourhood of one batch of seeds."""

    input_nodes: Tensor
    """(num_src of the first block,) int64 global ids; every block's nodes are a prefix of these."""
    blocks: list[Block]
    """One Block per graph layer, input layer first; the last one's dst nodes are the seeds."""

    @property
    def output_nodes(self) -> Tensor:
        return self.input_nodes[: self.blocks[-1].num_dst]


def _check_fanouts(fanouts: Sequence[int]) -> list[int]:
    fanouts = [int(f) for f in fanouts]
    if not fanouts or any(f < 0 and f != -1 for f in fanouts):
        raise ValueError(f"fanouts must be a non-empty list of ints >= 0 (or -1 for every neighbour), got {fanouts}")
    return fanouts


def _as_ids(value: Any, device: torch.device | None = None) -> Tensor:
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    return tensor.to(device=device, dtype=torch.int64)


def _as_src_ids(value: Any, device: torch.device | None = None) -> Tensor:
    """The CSC's src ids as they are where int32 (a graph under 2**31 nodes kept at 4 bytes an
    edge: it is only read through ``index_select``), else as int64."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    return tensor.to(device=device, dtype=torch.int32 if tensor.dtype == torch.int32 else torch.int64)


class TorchSampler:
    """Uniform neighbour sampling without replacement, in torch, on the CSC's device.

    ``indptr`` and ``indices`` (numpy int64 arrays are shared, not copied; int32 ``indices``
    are shared and walked as they are, half the memory, the same neighbours) are the in-edges of
    every node: node v's are ``indices[indptr[v]:indptr[v + 1]]``. ``fanouts`` are per layer,
    input layer first. Several threads may sample at once: each borrows its own node map (4
    bytes per graph node, kept for the next batches).
    """

    def __init__(self, indptr: Any, indices: Any, fanouts: Sequence[int]) -> None:
        self.indptr = _as_ids(indptr)
        self.indices = _as_src_ids(indices, self.indptr.device)
        self.fanouts = _check_fanouts(fanouts)
        self.num_nodes = len(self.indptr) - 1
        self._free_maps: list[Tensor] = []  # node -> local id maps, all ABSENT, for the next batches

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def sample(self, seeds: Any, generator: torch.Generator) -> SampledBlocks:
        """The blocks of ``seeds`` (distinct node ids), drawing only from ``generator``."""
        seeds = _as_ids(seeds, self.device)
        layers: list[tuple[Tensor, Tensor, int]] = []  # (indptr, local src ids, num_dst), top layer first
        nodes = seeds
        node_map = self._borrow_map()
        try:
            node_map[seeds] = torch.arange(len(seeds), dtype=torch.int32, device=self.device)
            if not bool((node_map.index_select(0, seeds) == torch.arange(len(seeds), device=self.device)).all()):
                raise ValueError("seeds must be distinct node ids: a node listed twice would be two dst nodes of one block")
            for fanout in reversed(self.fanouts):
                indptr, src = self._sample_edges(nodes, fanout, generator)
                local, new = self._relabel(node_map, src, len(nodes))
                layers.append((indptr, local, len(nodes)))
                nodes = torch.cat([nodes, new])
            node_map[nodes] = ABSENT
        except BaseException:
            node_map.fill_(ABSENT)  # entries may have been written that are not in ``nodes``
            raise
        finally:
            self._free_maps.append(node_map)
        blocks = [
            Block(indptr, local, num_src, num_dst, src_ids=nodes[:num_src], dst_ids=nodes[:num_dst])
            for (indptr, local, num_dst), num_src in zip(reversed(layers), _src_counts(layers, len(nodes)))
        ]
        return SampledBlocks(nodes, blocks)

    def _borrow_map(self) -> Tensor:
        try:
            return self._free_maps.pop()  # list.pop and append are atomic: one map per sampling thread
        except IndexError:
            return torch.full((self.num_nodes,), ABSENT, dtype=torch.int32, device=self.device)

    def _sample_edges(self, dst: Tensor, fanout: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The sampled in-edges of ``dst``: ``(indptr, src)``, ``src`` (E,) global ids in CSC order."""
        starts = self.indptr.index_select(0, dst)
        degrees = self.indptr.index_select(0, dst + 1) - starts
        take = degrees if fanout < 0 else degrees.clamp(max=fanout)
        out_indptr = torch.zeros(len(dst) + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(take, 0, out=out_indptr[1:])
        num_edges = int(out_indptr[-1])
        # Every dst node's first `take` in-edges, then the rows with more than `fanout` redrawn.
        edge_pos = torch.repeat_interleave(starts - out_indptr[:-1], take, output_size=num_edges)
        edge_pos += torch.arange(num_edges, device=self.device)
        if fanout >= 0:
            big = (degrees > fanout).nonzero().squeeze(1)
            if len(big):
                picked = floyd_sample(degrees.index_select(0, big), fanout, generator)  # (num_big, fanout)
                slots = out_indptr.index_select(0, big).unsqueeze(1) + torch.arange(fanout, device=self.device)
                edge_pos[slots.view(-1)] = (picked + starts.index_select(0, big).unsqueeze(1)).view(-1)
        src = self.indices.index_select(0, edge_pos)
        return out_indptr, src if src.dtype == torch.int64 else src.to(torch.int64)

    @staticmethod
    def _relabel(node_map: Tensor, src: Tensor, num_known: int) -> tuple[Tensor, Tensor]:
        """Local ids of ``src`` (E,) and the new nodes among them, numbered from ``num_known``.

        ``node_map`` holds the local id of each of the ``num_known`` nodes already in the batch
        and ABSENT elsewhere. Edge j writes the code ``-(1 + j)`` into its node's entry keeping
        the larger value (``amax``), so a known node keeps its id and a new node ends with the
        code of its first edge: the edges that find their own code there are each new node's
        first appearance, in edge order. A max is independent of the order of the writes, so
        CPU and CUDA agree.
        """
        num_edges = len(src)
        if num_edges >= -ABSENT:
            raise ValueError(f"a layer of {num_edges} sampled edges is more than the int32 node map can number")
        codes = -1 - torch.arange(num_edges, dtype=torch.int32, device=src.device)
        node_map.scatter_reduce_(0, src, codes, "amax")
        first = (node_map.index_select(0, src) == codes).nonzero().squeeze(1)
        new = src.index_select(0, first)
        node_map[new] = torch.arange(num_known, num_known + len(new), dtype=torch.int32, device=src.device)
        return node_map.index_select(0, src).to(torch.int64), new


def _src_counts(layers: list[tuple[Tensor, Tensor, int]], num_input: int) -> list[int]:
    """The src count of each layer, input layer first: every node of the batch for the input
    layer, and for each other layer the dst count of the layer before it."""
    dst_counts = [num_dst for _, _, num_dst in reversed(layers)]
    return [num_input] + dst_counts[:-1]


def floyd_sample(degrees: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """For each row, ``k`` distinct positions in [0, degree) chosen uniformly, ascending; needs
    degree > k.  (len(degrees), k) int64

    Floyd's algorithm, one column at a time over all rows: column i draws t uniformly from
    [0, d - k + i] and keeps it, or d - k + i where t was drawn before; each k-subset comes out
    with probability 1 / C(d, k), in k steps whatever the degree. Draws are float64 uniforms from
    ``generator`` (bias below 1e-9 for degrees under 2**23), made on its device.
    """
    device = degrees.device
    uniform = torch.rand((len(degrees), k), generator=generator, dtype=torch.float64, device=generator.device)
    uniform = uniform.to(device)
    upper = degrees.unsqueeze(1) - torch.arange(k, 0, -1, device=device)  # (rows, k) the largest position of each column
    chosen = (uniform * (upper + 1)).to(torch.int64).minimum(upper)  # every column's draw t at once
    for i in range(1, k):
        drawn_before = (chosen[:, :i] == chosen[:, i : i + 1]).any(dim=1)
        chosen[:, i] = torch.where(drawn_before, upper[:, i], chosen[:, i])
    return chosen.sort(dim=1).values


class DglSampler:
    """DGL's C++ neighbour sampler behind the same interface, CPU only; not reproducible across
    threads or processes (see the module docstring for where it may be used).

    DGL parallelises each call over OpenMP threads: on a machine with more busy threads than
    cores their barriers made a call 100x slower here (``dgl.utils.set_num_threads(1)`` then helps)."""

    def __init__(self, indptr: Any, indices: Any, fanouts: Sequence[int]) -> None:
        from strata._dgl import dgl

        self._dgl = dgl
        indptr_t, indices_t = _as_ids(indptr), _as_ids(indices)
        if indptr_t.device.type != "cpu":
            raise ValueError(f"DGL's sampler runs on CPU only (the PyPI build has no CUDA); the CSC is on {indptr_t.device}")
        self.fanouts = _check_fanouts(fanouts)
        no_eids = torch.empty(0, dtype=torch.int64)
        self.graph = dgl.graph(("csc", (indptr_t, indices_t, no_eids)), num_nodes=len(indptr_t) - 1)

    def sample(self, seeds: Any, generator: torch.Generator | None = None) -> SampledBlocks:
        """The blocks of ``seeds``; ``generator``, where given, reseeds DGL's global generator
        (``dgl.seed``) with one draw from it, which repeats a batch only on one thread."""
        dgl = self._dgl
        if generator is not None:
            dgl.seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        nodes = _as_ids(seeds)
        layers = []
        for fanout in reversed(self.fanouts):
            frontier = dgl.sampling.sample_neighbors(self.graph, nodes, fanout)
            block = dgl.to_block(frontier, nodes)
            indptr, indices, _ = block.adj_tensors("csc")
            layers.append((indptr, indices, block.num_dst_nodes()))
            nodes = block.srcdata[dgl.NID]
        blocks = [
            Block(indptr, local, num_src, num_dst, src_ids=nodes[:num_src], dst_ids=nodes[:num_dst])
            for (indptr, local, num_dst), num_src in zip(reversed(layers), _src_counts(layers, len(nodes)))
        ]
        return SampledBlocks(nodes, blocks)


def make_sampler(indptr: Any, indices: Any, fanouts: Sequence[int], backend: str = "torch") -> TorchSampler | DglSampler:
    """The sampler named by ``backend``: 'torch' (reproducible, any device; the default) or
    'dgl' (DGL's CPU sampler; not reproducible across threads or processes)."""
    if backend == "torch":
        return TorchSampler(indptr, indices, fanouts)
    if backend == "dgl":
        return DglSampler(indptr, indices, fanouts)
    raise ValueError(f"sampler backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
