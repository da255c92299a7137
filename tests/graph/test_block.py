"""strata.graph.block.Block: construction from a CSC and from DGL, degrees, the transposed CSR,
moving, pinning and pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from strata.graph import ops
from strata.graph.block import Block
from tests.helpers.graphs import awkward_csc

needs_dgl = pytest.mark.skipif(not ops.dgl_available(), reason="DGL does not import here")


def test_a_full_graph_from_csc_shares_memory_and_counts_its_own_degrees() -> None:
    indptr, indices = awkward_csc(50, 50, 300)
    block = Block.from_csc(indptr, indices)
    assert (block.num_src, block.num_dst, block.num_edges) == (50, 50, len(indices))
    assert block.indices.data_ptr() == indices.ctypes.data  # int64 numpy memory is not copied
    assert block.dst_degrees().tolist() == np.diff(indptr).tolist() == block.local_in_degrees().tolist()
    assert block.src_degrees().tolist() == np.bincount(indices, minlength=50).tolist()
    assert block.edge_dst().tolist() == np.repeat(np.arange(50), np.diff(indptr)).tolist()
    assert repr(block) == f"Block(num_src=50, num_dst=50, num_edges={len(indices)}, device=cpu, carries=[])"


def test_carried_ids_and_degrees_are_what_the_block_reports() -> None:
    indptr, indices = awkward_csc(40, 15, 100)
    block = Block.from_csc(indptr, indices, num_src=40, src_ids=np.arange(100, 140), dst_ids=torch.arange(100, 115),
                           out_deg=np.full(40, 7, dtype=np.int32), in_deg=[3] * 15)
    assert block.src_degrees().tolist() == [7] * 40 and block.dst_degrees().tolist() == [3] * 15
    assert block.out_deg.dtype == torch.int64 and block.dst_ids.tolist() == list(range(100, 115))
    assert block.dst_rows(torch.arange(40)).tolist() == list(range(15))
    assert block.local_in_degrees().tolist() == np.diff(indptr).tolist()  # mean still divides by its own edges


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda p, i: (p, i, {"num_src": 10}), ValueError, r"need 0 <= num_dst <= num_src, got num_dst=15, num_src=10"),
        (lambda p, i: (p, i.astype(np.float32), {}), TypeError, "Block.indices must hold integers, got torch.float32"),
        (lambda p, i: (p[:-1], i, {"num_src": 40}), ValueError, "indptr must start at 0, never decrease and end at the edge count"),
        (lambda p, i: (p, i + 40, {"num_src": 40}), ValueError, r"indices must be src ids in \[0, 40\)"),
        (lambda p, i: (p, i, {"num_src": 40, "out_deg": np.ones(39, dtype=np.int64)}), ValueError,
         r"Block.out_deg must have shape \(40,\) for 40 src and 15 dst nodes, got \(39,\)"),
    ],
)
def test_bad_csc_is_refused(change, error: type, message: str) -> None:
    indptr, indices, kwargs = change(*awkward_csc(40, 15, 100))
    with pytest.raises(error, match=message):
        Block.from_csc(indptr, indices, **kwargs)


def test_a_tensor_on_another_device_is_refused() -> None:
    indptr, indices = awkward_csc(40, 40, 100)
    with pytest.raises(ValueError, match="Block.indices is on meta but indptr is on cpu: keep a Block on one device"):
        Block(torch.from_numpy(indptr), torch.empty(len(indices), dtype=torch.int64, device="meta"), 40, 40)


def test_the_transposed_csr_lists_each_src_nodes_out_edges_by_dst() -> None:
    indptr, indices = awkward_csc(40, 25, 200, seed=5)
    block = Block.from_csc(indptr, indices, num_src=40)
    t = block.transposed()
    dst = np.repeat(np.arange(25), np.diff(indptr))
    for u in range(40):
        edges = t.edge_ids[t.indptr[u] : t.indptr[u + 1]].numpy()
        expected = sorted(np.flatnonzero(indices == u), key=lambda e: (dst[e], e))  # by dst, CSC order within
        assert edges.tolist() == expected
        assert t.indices[t.indptr[u] : t.indptr[u + 1]].tolist() == dst[expected].tolist()
    assert block.transposed() is t  # built once


@needs_dgl
def test_from_dgl_reads_a_sampled_blocks_csc_ids_and_degrees() -> None:
    from strata._dgl import dgl

    indptr, indices = awkward_csc(200, 200, 1500, seed=6)
    graph = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([]))))
    _, _, (dgl_block,) = dgl.dataloading.NeighborSampler([5]).sample_blocks(graph, torch.arange(0, 200, 11))
    dgl_block.srcdata["out_deg"] = graph.out_degrees()[dgl_block.srcdata[dgl.NID]]
    block = Block.from_dgl(dgl_block)
    assert (block.num_src, block.num_dst, block.num_edges) == (
        dgl_block.num_src_nodes(), dgl_block.num_dst_nodes(), dgl_block.num_edges())
    assert block.src_ids.tolist() == dgl_block.srcdata[dgl.NID].tolist()
    assert block.dst_ids.tolist() == list(range(0, 200, 11)) == block.src_ids[: block.num_dst].tolist()
    assert block.out_deg.tolist() == graph.out_degrees()[block.src_ids].tolist() and block.in_deg is None
    # the same edges: (src, dst) pairs of the block, in global ids
    src, dst = dgl_block.edges()
    expected = sorted(zip(block.src_ids[src].tolist(), block.dst_ids[dst].tolist()))
    assert sorted(zip(block.src_ids[block.indices].tolist(), block.dst_ids[block.edge_dst()].tolist())) == expected
    # a whole DGLGraph is a Block with as many src as dst nodes
    full = Block.from_dgl(graph)
    assert (full.num_src, full.num_dst) == (200, 200)
    assert full.indptr.tolist() == indptr.tolist() and full.indices.tolist() == indices.tolist()


def test_to_moves_every_tensor_and_leaves_the_cache_behind() -> None:
    indptr, indices = awkward_csc(40, 15, 100)
    block = Block.from_csc(indptr, indices, num_src=40, src_ids=np.arange(40), out_deg=np.ones(40, dtype=np.int64))
    block.transposed()
    assert block.to("cpu") is block and block.to(torch.device("cpu")) is block
    moved = block.to("meta")
    assert moved.device == torch.device("meta") and moved.src_ids.device == moved.out_deg.device == torch.device("meta")
    assert moved.dst_ids is None and (moved.num_src, moved.num_dst) == (40, 15) and moved._cache == {}


def test_pin_memory_without_cuda_returns_the_block_and_pickling_drops_the_cache() -> None:
    block = Block.from_csc(*awkward_csc(40, 40, 100))
    block.transposed()
    if not torch.cuda.is_available():
        assert block.pin_memory() is block and not block.is_pinned()
    with pytest.raises(ValueError, match="only a Block in host memory can be pinned; this one is on meta"):
        block.to("meta").pin_memory()
    again = pickle.loads(pickle.dumps(block))
    assert again._cache == {} and torch.equal(again.indices, block.indices) and again.num_src == 40


@pytest.mark.cuda
def test_a_pinned_block_copies_to_cuda_without_blocking() -> None:
    indptr, indices = awkward_csc(40, 15, 100)
    block = Block.from_csc(indptr, indices, num_src=40, src_ids=np.arange(40), in_deg=np.ones(15, dtype=np.int64))
    pinned = block.pin_memory()
    assert pinned.is_pinned() and pinned.src_ids.is_pinned() and pinned.in_deg.is_pinned()
    assert pinned.pin_memory() is pinned
    on_gpu = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert on_gpu.device.type == "cuda" and on_gpu.in_deg.is_cuda
    back = on_gpu.to("cpu")
    assert torch.equal(back.indices, block.indices) and torch.equal(back.src_ids, block.src_ids)
    assert on_gpu.edge_dst().is_cuda and on_gpu.transposed().edge_ids.is_cuda
