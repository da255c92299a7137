"""``Block``: the graph tensors a GNN layer computes on, on any device.

A Block is a bipartite graph from ``num_src`` source nodes to ``num_dst`` destination nodes,
stored as the CSC of its in-edges: the in-edges of dst node v are ``indices[indptr[v]:indptr[v + 1]]``
(their src ids), and an edge's id is its position in ``indices``. As in DGL's blocks, the dst
nodes come first among the src nodes (dst node i is src node i), so ``h[:num_dst]`` are the dst
rows of src features ``h``. A full graph is a Block with ``num_src == num_dst``; a partition with
its halo is one whose src nodes are the owned nodes followed by the halo; a sampled layer is one
whose src nodes are its dst nodes followed by the sampled neighbours.

Degrees: GCN's norms use the degrees of the whole graph, which a partition or a sampled block
does not see, so a Block may carry them (``out_deg`` of its src nodes, ``in_deg`` of its dst
nodes, global); without them :meth:`src_degrees` and :meth:`dst_degrees` count the Block's
own edges, as DGL's ``out_degrees()`` / ``in_degrees()`` do.

What kernels derive from the structure (the transposed CSR of a backward pass, torch's sparse
matrices, DGL's graph) is built on first use and cached on the Block, so build it once and use it
for every layer and step; a Block is treated as immutable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Csr:
    """A Block's out-edges, grouped by src node: the transposed CSR of the backward passes.

    The out-edges of src node u are the CSC edges ``edge_ids[indptr[u]:indptr[u + 1]]``, whose
    dst nodes are ``indices[indptr[u]:indptr[u + 1]]``, in ascending order of dst (multi-edges
    kept, next to each other, in CSC order).
    """

    indptr: Tensor  # (num_src + 1,) int64
    indices: Tensor  # (E,) int64 dst ids
    edge_ids: Tensor  # (E,) int64 position of each edge in the Block's CSC


def _ids(value: Any, name: str) -> Tensor:
    """``value`` (numpy array, tensor or sequence) as an int64 tensor; numpy int64 memory is shared."""
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else torch.as_tensor(value)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"Block.{name} must hold integers, got {tensor.dtype}")
    return tensor.to(torch.int64)


def _int32_or_ids(value: Any, name: str, keep_int32: bool) -> Tensor:
    """``value`` as :func:`_ids` gives it, but int32 kept as it is (shared) where ``keep_int32``."""
    if keep_int32:
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else torch.as_tensor(value)
        if tensor.dtype == torch.int32:
            return tensor
    return _ids(value, name)


@dataclass(eq=False)
class Block:
    """CSC graph tensors from ``num_src`` src nodes to ``num_dst`` dst nodes (dst nodes first)."""

    indptr: Tensor
    """(num_dst + 1,) int64: dst node v's in-edges are ``indices[indptr[v]:indptr[v + 1]]``."""
    indices: Tensor
    """(E,) int64: the src node of each edge. A whole graph (``num_src == num_dst``, no ids
    carried) that samplers walk may hold int32 ids instead, half the bytes of the largest array
    of a big graph (:meth:`from_csc` with ``compact=True``); kernels compute on int64 indices and
    refuse such a Block (:meth:`cached`), :meth:`with_int64_indices` gives them the copy."""
    num_src: int
    """Number of src nodes; at least ``num_dst``, as the dst nodes are the first src nodes."""
    num_dst: int
    """Number of dst nodes."""
    src_ids: Tensor | None = None
    """(num_src,) int64 global node id of each src node, where the Block is part of a larger graph."""
    dst_ids: Tensor | None = None
    """(num_dst,) int64 global node id of each dst node."""
    out_deg: Tensor | None = None
    """(num_src,) int64 out-degree of each src node in the whole graph (GCN's src norm)."""
    in_deg: Tensor | None = None
    """(num_dst,) int64 in-degree of each dst node in the whole graph (GCN's dst norm)."""
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # Shape, dtype and device only: reading values would synchronise a CUDA device.
        if self.num_dst < 0 or self.num_src < self.num_dst:
            raise ValueError(f"a Block's dst nodes are its first src nodes: need 0 <= num_dst <= num_src, got "
                             f"num_dst={self.num_dst}, num_src={self.num_src}")
        expected = {"indptr": (self.num_dst + 1,), "indices": None, "src_ids": (self.num_src,),
                    "dst_ids": (self.num_dst,), "out_deg": (self.num_src,), "in_deg": (self.num_dst,)}
        device = self.indptr.device
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor is None:
                continue
            if tensor.dim() != 1 or (tensor.dtype != torch.int64 and not (name == "indices" and tensor.dtype == torch.int32)):
                raise TypeError(f"Block.{name} must be a 1-D int64 tensor, got {tensor.dtype} of shape {tuple(tensor.shape)}")
            if shape is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"Block.{name} must have shape {shape} for {self.num_src} src and {self.num_dst} dst "
                                 f"nodes, got {tuple(tensor.shape)}")
            if tensor.device != device:
                raise ValueError(f"Block.{name} is on {tensor.device} but indptr is on {device}: keep a Block on one device")
        if self.is_compact and (self.num_src != self.num_dst or self.src_ids is not None or self.dst_ids is not None):
            raise TypeError(f"Block.indices may be int32 only in a whole graph that samplers walk (num_src == num_dst, no "
                            f"ids carried); this Block has {self.num_src} src and {self.num_dst} dst nodes"
                            f"{' and carries ids' if self.src_ids is not None or self.dst_ids is not None else ''}: give it int64 indices")

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_csc(
        cls, indptr: Any, indices: Any, *, num_src: int | None = None, src_ids: Any = None, dst_ids: Any = None,
        out_deg: Any = None, in_deg: Any = None, check: bool = True, compact: bool = False,
    ) -> Block:
        """A Block over a CSC (numpy arrays or tensors; int64 numpy memory is shared, not copied).

        Without ``num_src`` it is the full graph of ``len(indptr) - 1`` nodes. ``check`` reads
        the values once (indptr starts at 0, ascends and ends at the edge count; every src id is
        below ``num_src``): leave it on for data from outside. ``compact`` keeps int32
        ``indices`` as they are (shared, not widened): a whole graph for samplers to walk, which
        kernels refuse (see :attr:`indices`); other integer types are widened to int64 as usual.
        """
        indptr_t, indices_t = _ids(indptr, "indptr"), _int32_or_ids(indices, "indices", compact)
        num_dst = len(indptr_t) - 1
        block = cls(
            indptr_t, indices_t, num_dst if num_src is None else int(num_src), num_dst,
            *(None if value is None else _ids(value, name)
              for name, value in (("src_ids", src_ids), ("dst_ids", dst_ids), ("out_deg", out_deg), ("in_deg", in_deg))),
        )
        if check:
            block.check()
        return block

    @classmethod
    def from_dgl(cls, graph: Any) -> Block:
        """A Block over a DGL block or DGLGraph (its in-edges in CSC order; edge data is not kept).

        Node ids come from ``srcdata`` / ``dstdata`` ``dgl.NID`` (a sampled block's global ids),
        global degrees from ``srcdata["out_deg"]`` and ``dstdata["in_deg"]``, where present.
        """
        from strata._dgl import dgl

        indptr, indices, _ = graph.adj_tensors("csc")
        srcdata, dstdata = graph.srcdata, graph.dstdata

        def get(data: Any, key: str) -> Tensor | None:
            return data[key].to(torch.int64) if key in data else None

        return cls(
            indptr.to(torch.int64), indices.to(torch.int64), graph.num_src_nodes(), graph.num_dst_nodes(),
            get(srcdata, dgl.NID), get(dstdata, dgl.NID), get(srcdata, "out_deg"), get(dstdata, "in_deg"),
        )

    def check(self) -> None:
        """Raise ValueError where the CSC's values do not describe a graph of this Block's size."""
        if self.indptr[0] != 0 or self.indptr[-1] != len(self.indices) or bool((self.indptr.diff() < 0).any()):
            raise ValueError(f"Block.indptr must start at 0, never decrease and end at the edge count "
                             f"{len(self.indices)}; got {self.indptr[0]} ... {self.indptr[-1]}")
        if len(self.indices) and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.num_src):
            raise ValueError(f"Block.indices must be src ids in [0, {self.num_src}); got ids from "
                             f"{int(self.indices.min())} to {int(self.indices.max())}")

    def __repr__(self) -> str:
        carried = [name for name in ("src_ids", "dst_ids", "out_deg", "in_deg") if getattr(self, name) is not None]
        return (f"Block(num_src={self.num_src}, num_dst={self.num_dst}, num_edges={self.num_edges}, "
                f"device={self.device}, carries=[{', '.join(carried)}])")

    # -- sizes and degrees ----------------------------------------------------------------------

    @property
    def num_edges(self) -> int:
        return len(self.indices)

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    @property
    def is_compact(self) -> bool:
        """Whether the indices are int32: a whole graph for samplers, not for kernels."""
        return self.indices.dtype == torch.int32

    def with_int64_indices(self) -> Block:
        """This Block with int64 indices, as kernels need them: itself where they are already,
        else a copy of the indices (8 bytes an edge; the other tensors are shared)."""
        if not self.is_compact:
            return self
        return Block(self.indptr, self.indices.to(torch.int64), self.num_src, self.num_dst,
                     self.src_ids, self.dst_ids, self.out_deg, self.in_deg)

    def dst_rows(self, h: Tensor) -> Tensor:
        """The rows of src features ``h`` that belong to dst nodes.  (num_dst, ...)"""
        return h[: self.num_dst]

    def src_degrees(self) -> Tensor:
        """(num_src,) int64: ``out_deg`` where carried, else each src node's out-edges in this Block."""
        if self.out_deg is not None:
            return self.out_deg
        return self._memo("local_out_deg", lambda: torch.bincount(self.indices, minlength=self.num_src))

    def dst_degrees(self) -> Tensor:
        """(num_dst,) int64: ``in_deg`` where carried, else each dst node's in-edges in this Block."""
        return self.in_deg if self.in_deg is not None else self.local_in_degrees()

    def local_in_degrees(self) -> Tensor:
        """(num_dst,) int64: each dst node's in-edges in this Block (mean aggregation divides by these)."""
        return self._memo("local_in_deg", lambda: self.indptr.diff())

    def edge_dst(self) -> Tensor:
        """(E,) int64: the dst node of each edge."""
        return self.cached("edge_dst", lambda: torch.repeat_interleave(
            torch.arange(self.num_dst, device=self.device), self.local_in_degrees(), output_size=self.num_edges))

    def transposed(self) -> Csr:
        """The out-edges grouped by src node (built on first use, then cached): what a backward
        pass walks to send gradients from dst nodes back to src nodes."""
        return self.cached("transposed", self._transpose)

    def _transpose(self) -> Csr:
        # A stable sort by src keeps CSC order within a src node, which is ascending dst.
        order = torch.sort(self.indices, stable=True).indices  # (E,) CSC edge ids grouped by src
        counts = torch.bincount(self.indices, minlength=self.num_src)
        indptr = torch.zeros(self.num_src + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        return Csr(indptr, self.edge_dst()[order], order)

    def cached(self, key: str, build: Any) -> Any:
        """The kernels' cache: ``build()`` once per Block and key. Every kernel derives its
        structures here, so a compact Block (int32 indices, which DGL's kernels cannot take
        beside an int64 row pointer) is refused here, naming the cast."""
        if self.is_compact:
            raise TypeError(f"{self!r} has int32 indices: it is a whole graph kept compact for samplers to walk; "
                            "kernels compute on int64 indices: use block.with_int64_indices() (a copy, 8 bytes an edge)")
        return self._memo(key, build)

    def _memo(self, key: str, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # -- moving ---------------------------------------------------------------------------------

    def _map(self, fn: Any) -> Block:
        return Block(
            fn(self.indptr), fn(self.indices), self.num_src, self.num_dst,
            *(None if t is None else fn(t) for t in (self.src_ids, self.dst_ids, self.out_deg, self.in_deg)),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Block:
        """This Block's tensors on ``device`` (the Block itself where they are there already).
        The cache is not carried: what kernels derived is rebuilt on the new device."""
        if torch.device(device) == self.device:
            return self
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Block:
        """This Block with its tensors in pinned (page-locked) host memory, for ``to(cuda,
        non_blocking=True)`` copies that overlap compute. Pinning needs a CUDA device; without one
        the Block is returned as it is, as torch's DataLoader does with ``pin_memory=True``."""
        if self.device.type != "cpu":
            raise ValueError(f"only a Block in host memory can be pinned; this one is on {self.device}")
        if not torch.cuda.is_available() or self.is_pinned():
            return self
        return self._map(lambda t: t.pin_memory())

    def is_pinned(self) -> bool:
        return self.indptr.is_pinned() and self.indices.is_pinned()

    def __getstate__(self) -> dict[str, Any]:
        # What kernels derived (a DGL graph, sparse matrices) is rebuilt, not pickled.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state
