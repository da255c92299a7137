"""strata.graph.sampler: the blocks it builds, its determinism, and its distribution, which is
DGL's: per-node fanout exact, per-edge inclusion frequencies and per-subset frequencies within
sampling error of the exact uniform law, for strata's torch sampler and for DGL's."""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections import Counter

import numpy as np
import pytest
import torch

from strata.graph import ops
from strata.graph.sampler import DglSampler, SampledBlocks, TorchSampler, floyd_sample, make_sampler
from strata.storage.featstore.sampling import NeighbourSampler
from tests.helpers.graphs import awkward_csc
from tests.helpers.no_dgl import HIDE_DGL

needs_dgl = pytest.mark.skipif(not ops.dgl_available(), reason="DGL does not import here")


@pytest.fixture
def one_dgl_thread():
    """DGL's sampler on one OpenMP thread, as long as the test runs: on a loaded machine its
    threads' barriers made each call take 100x longer (and one thread repeats a seed's draws)."""
    from strata._dgl import dgl

    threads = dgl.utils.get_num_threads()
    dgl.utils.set_num_threads(1)
    yield
    dgl.utils.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_blocks(
    sampled: SampledBlocks, indptr: np.ndarray, indices: np.ndarray, fanouts: list[int], seeds: np.ndarray, csc_order: bool = True,
) -> None:
    """The DGL block convention, and each dst node's edges: min(fanout, degree) of its own
    in-edges, at distinct CSC positions, in CSC order where ``csc_order``."""
    ids = sampled.input_nodes.numpy()
    assert len(np.unique(ids)) == len(ids)
    assert np.array_equal(sampled.output_nodes.numpy(), seeds)
    assert len(sampled.blocks) == len(fanouts)
    for below, above in zip(sampled.blocks, sampled.blocks[1:]):
        assert below.num_dst == above.num_src  # a layer's src nodes are the dst nodes of the layer below
    for block, fanout in zip(sampled.blocks, fanouts):
        block.check()
        assert np.array_equal(block.src_ids.numpy(), ids[: block.num_src])
        assert np.array_equal(block.dst_ids.numpy(), ids[: block.num_dst])
        local_indptr, local = block.indptr.numpy(), block.indices.numpy()
        for row in range(block.num_dst):
            v = ids[row]
            own = indices[indptr[v] : indptr[v + 1]]
            picked = ids[local[local_indptr[row] : local_indptr[row + 1]]]
            assert len(picked) == (len(own) if fanout < 0 else min(len(own), fanout))
            if not csc_order:  # then a sub-multiset of the row, in any order
                assert not Counter(picked.tolist()) - Counter(own.tolist()), (v, own, picked)
                continue
            # a subsequence of the row: distinct positions, CSC order (multi-edges included)
            it = iter(own.tolist())
            assert all(any(u == w for w in it) for u in picked.tolist()), (v, own, picked)


@pytest.mark.parametrize("fanouts", [[3, 2], [-1, 4, 1], [0, 5]])
def test_blocks_nest_and_take_min_fanout_degree_in_edges_of_their_own(fanouts: list[int]) -> None:
    indptr, indices = awkward_csc(300, 300, 2500, seed=len(fanouts))
    seeds = np.random.default_rng(1).permutation(300)[:40]
    sampler = TorchSampler(indptr, indices, fanouts)
    for seed in range(3):
        _check_blocks(sampler.sample(torch.from_numpy(seeds), _gen(seed)), indptr, indices, fanouts, seeds)


def test_every_neighbour_is_the_whole_in_neighbourhood() -> None:
    indptr, indices = awkward_csc(100, 100, 800)
    seeds = torch.tensor([5, 2, 40, 0, 99])
    sampled = TorchSampler(indptr, indices, [-1]).sample(seeds, _gen(0))
    block = sampled.blocks[0]
    ids = sampled.input_nodes.numpy()
    for row, v in enumerate(seeds.tolist()):
        got = ids[block.indices[block.indptr[row] : block.indptr[row + 1]].numpy()]
        assert got.tolist() == indices[indptr[v] : indptr[v + 1]].tolist()
    # New nodes come in the order they first appear among the edges, after the seeds.
    first_seen = list(dict.fromkeys(ids[block.indices.numpy()].tolist()))
    assert ids[len(seeds):].tolist() == [u for u in first_seen if u not in seeds.tolist()]


def test_same_generator_same_blocks_on_any_thread_and_reusing_the_node_map() -> None:
    indptr, indices = awkward_csc(2000, 2000, 20000, seed=3)
    sampler = TorchSampler(indptr, indices, [5, 5])
    seeds = torch.from_numpy(np.random.default_rng(0).permutation(2000)[:100])

    def arrays(sampled: SampledBlocks) -> list[list[int]]:
        return [sampled.input_nodes.tolist()] + [t.tolist() for b in sampled.blocks for t in (b.indptr, b.indices)]

    expected = arrays(sampler.sample(seeds, _gen(11)))
    results: list[list[list[int]]] = []
    threads = [threading.Thread(target=lambda: results.extend(arrays(sampler.sample(seeds, _gen(11))) for _ in range(5)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 15 and all(r == expected for r in results)
    assert arrays(sampler.sample(seeds, _gen(12))) != expected
    assert arrays(TorchSampler(indptr, indices, [5, 5]).sample(seeds, _gen(11))) == expected  # a fresh sampler too


def test_same_blocks_whatever_the_number_of_torch_threads() -> None:
    # Big enough (about 40k sampled edges) for torch to split its ops over threads.
    rng = np.random.default_rng(6)
    n = 20_000
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rng.integers(0, n, 200_000), minlength=n))])
    indices = rng.integers(0, n, int(indptr[-1]))
    sampler = TorchSampler(indptr, indices, [10, 10])
    seeds = torch.from_numpy(rng.permutation(n)[:4096])
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 4):
            torch.set_num_threads(count)
            sampled = sampler.sample(seeds, _gen(3))
            results.append([sampled.input_nodes] + [t for b in sampled.blocks for t in (b.indptr, b.indices)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_repeated_seeds_are_refused_and_leave_the_sampler_usable() -> None:
    indptr, indices = awkward_csc(50, 50, 300)
    sampler = TorchSampler(indptr, indices, [2])
    before = sampler.sample(torch.tensor([1, 2, 3]), _gen(0)).input_nodes.tolist()
    with pytest.raises(ValueError, match="seeds must be distinct"):
        sampler.sample(torch.tensor([1, 2, 1]), _gen(0))
    assert sampler.sample(torch.tensor([1, 2, 3]), _gen(0)).input_nodes.tolist() == before
    with pytest.raises(ValueError, match="fanouts must be"):
        TorchSampler(indptr, indices, [-2])
    with pytest.raises(ValueError, match="backend must be one of torch, dgl"):
        make_sampler(indptr, indices, [2], backend="numpy")


def test_the_packers_numpy_batches_are_the_torch_samplers_blocks() -> None:
    indptr, indices = awkward_csc(400, 400, 3000, seed=5)
    seeds = np.arange(0, 400, 7)
    sampled = TorchSampler(indptr, indices, [4, 3]).sample(torch.from_numpy(seeds), _gen(4))
    batch = NeighbourSampler(indptr, indices, [4, 3]).sample(seeds, _gen(4))
    assert np.array_equal(batch.input_nodes, sampled.input_nodes.numpy())
    for mine, theirs in zip(batch.to_graph_blocks(), sampled.blocks):
        for name in ("indptr", "indices", "src_ids", "dst_ids"):
            assert torch.equal(getattr(mine, name), getattr(theirs, name)), name
        assert (mine.num_src, mine.num_dst) == (theirs.num_src, theirs.num_dst)


# -- the distribution, against the exact law and DGL's sampler -------------------------------

DEGREES = (0, 1, 3, 4, 5, 7, 12, 40)
FANOUT = 4
COPIES = 250
DRAWS = 20  # calls; each samples every copy once, so COPIES * DRAWS draws per node
SUBSET_DEGREE = 7  # C(7, 4) = 35 subsets, each with probability 1/35


def _star_copies() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COPIES disjoint copies of one graph: a dst node per degree in DEGREES, each with in-edges
    from sources of its own (so a sampled source names the edge). Returns the CSC and the dst
    nodes, copy-major."""
    per_copy = len(DEGREES) + sum(DEGREES)
    in_rows: list[list[int]] = []
    for copy in range(COPIES):
        base = copy * per_copy
        next_src = base + len(DEGREES)
        for degree in DEGREES:
            in_rows.append(list(range(next_src, next_src + degree)))
            next_src += degree
        in_rows.extend([] for _ in range(sum(DEGREES)))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in in_rows])]).astype(np.int64)
    indices = np.array([u for r in in_rows for u in r], dtype=np.int64)
    dst = (np.arange(COPIES)[:, None] * per_copy + np.arange(len(DEGREES))).reshape(-1)
    return indptr, indices, dst


def _edge_and_subset_counts(sampler: object, indptr: np.ndarray, indices: np.ndarray, dst: np.ndarray, draw: object) -> tuple:
    """Over DRAWS calls: how often each (degree class, edge position) was sampled, and how often
    each subset of the SUBSET_DEGREE node's edges; asserts the per-node fanout on every call."""
    degrees = np.array(DEGREES)
    class_offset = np.concatenate([[0], np.cumsum(degrees)])  # flat index of (class, position)
    flat_counts = np.zeros(class_offset[-1], dtype=np.int64)
    subsets: dict[tuple[int, ...], int] = {}
    for call in range(DRAWS):
        sampled = draw(sampler, torch.from_numpy(dst), call)
        block = sampled.blocks[0]
        ids, local_indptr = sampled.input_nodes.numpy(), block.indptr.numpy()
        row_cls = np.arange(len(dst)) % len(DEGREES)
        assert np.array_equal(np.diff(local_indptr), np.minimum(FANOUT, degrees[row_cls]))
        edge_row = np.repeat(np.arange(len(dst)), np.diff(local_indptr))
        first_source = indices[np.minimum(indptr[dst], len(indices) - 1)]  # each row's sources are consecutive ids
        positions = ids[block.indices.numpy()] - first_source[edge_row]
        assert ((positions >= 0) & (positions < degrees[row_cls[edge_row]])).all()
        assert len(np.unique(edge_row * 64 + positions)) == len(positions)  # distinct edges within a row
        np.add.at(flat_counts, class_offset[row_cls[edge_row]] + positions, 1)
        chosen = positions[degrees[row_cls[edge_row]] == SUBSET_DEGREE].reshape(-1, FANOUT)
        for key in map(tuple, np.sort(chosen, axis=1).tolist()):
            subsets[key] = subsets.get(key, 0) + 1
    edge_counts = [flat_counts[class_offset[i] : class_offset[i + 1]] for i in range(len(DEGREES))]
    return edge_counts, subsets


def _assert_uniform(edge_counts: list[np.ndarray], subsets: dict[tuple[int, ...], int], who: str) -> None:
    draws = COPIES * DRAWS
    for degree, counts in zip(DEGREES, edge_counts):
        if degree == 0:
            continue
        p = min(1.0, FANOUT / degree)
        if p == 1.0:
            assert (counts == draws).all(), f"{who}: degree {degree} <= fanout must take every edge"
            continue
        z = (counts - draws * p) / math.sqrt(draws * p * (1 - p))
        # 4.5 sigma on each of ~60 edges: a false alarm about once in 2,500 runs of a correct sampler.
        assert np.abs(z).max() < 4.5, f"{who}: degree {degree} edge inclusion frequencies {counts / draws} vs {p:.3f}"
    all_subsets = list(itertools.combinations(range(SUBSET_DEGREE), FANOUT))
    assert set(subsets) <= set(all_subsets)
    expected = draws / len(all_subsets)
    chi2 = sum((subsets.get(s, 0) - expected) ** 2 / expected for s in all_subsets)
    assert chi2 < 75.0, f"{who}: chi-square {chi2:.1f} over {len(all_subsets)} subsets (34 dof; p < 1e-4 above 75)"


def _torch_draw(sampler: TorchSampler, seeds: torch.Tensor, call: int) -> SampledBlocks:
    return sampler.sample(seeds, _gen(1000 + call))


@functools.cache
def _torch_counts() -> tuple:
    indptr, indices, dst = _star_copies()
    return _edge_and_subset_counts(TorchSampler(indptr, indices, [FANOUT]), indptr, indices, dst, _torch_draw)


def test_torch_sampler_draws_every_subset_uniformly() -> None:
    counts, subsets = _torch_counts()
    _assert_uniform(counts, subsets, "torch sampler")


@needs_dgl
def test_dgl_sampler_has_the_same_distribution_and_fanouts(one_dgl_thread: None) -> None:
    indptr, indices, dst = _star_copies()
    torch_counts, _ = _torch_counts()
    sampler = make_sampler(indptr, indices, [FANOUT], backend="dgl")
    assert isinstance(sampler, DglSampler)
    counts, subsets = _edge_and_subset_counts(sampler, indptr, indices, dst, lambda s, seeds, call: s.sample(seeds, _gen(call)))
    _assert_uniform(counts, subsets, "DGL's sampler")
    # Two-sample test, torch against DGL, per edge: the same inclusion probability.
    draws = COPIES * DRAWS
    for degree, mine, theirs in zip(DEGREES, torch_counts, counts):
        if degree > FANOUT:
            p = (mine + theirs) / (2 * draws)
            z = (mine - theirs) / np.sqrt(2 * draws * p * (1 - p))
            assert np.abs(z).max() < 4.5, f"degree {degree}: torch {mine / draws} vs DGL {theirs / draws}"


@needs_dgl
def test_dgl_sampler_builds_blocks_of_the_same_convention(one_dgl_thread: None) -> None:
    indptr, indices = awkward_csc(300, 300, 2500, seed=9)
    seeds = np.random.default_rng(2).permutation(300)[:40]
    sampled = DglSampler(indptr, indices, [3, 2]).sample(torch.from_numpy(seeds), _gen(0))
    _check_blocks(sampled, indptr, indices, [3, 2], seeds, csc_order=False)


def test_floyd_sample_is_distinct_sorted_and_in_range() -> None:
    degrees = torch.tensor([5, 6, 100, 10**6])
    picked = floyd_sample(degrees, 5, _gen(0))
    assert picked.shape == (4, 5)
    assert (picked.diff(dim=1) > 0).all() and (picked >= 0).all() and (picked < degrees.unsqueeze(1)).all()


@pytest.mark.cuda
def test_a_cpu_generator_gives_the_same_blocks_on_cuda() -> None:
    indptr, indices = awkward_csc(3000, 3000, 30000, seed=4)
    seeds = torch.from_numpy(np.random.default_rng(0).permutation(3000)[:256])
    on_cpu = TorchSampler(indptr, indices, [5, 3]).sample(seeds, _gen(8))
    cuda = torch.device("cuda")
    on_gpu = TorchSampler(torch.from_numpy(indptr).to(cuda), torch.from_numpy(indices).to(cuda), [5, 3]).sample(seeds.to(cuda), _gen(8))
    assert on_gpu.input_nodes.device.type == "cuda"
    assert torch.equal(on_gpu.input_nodes.cpu(), on_cpu.input_nodes)
    for a, b in zip(on_gpu.blocks, on_cpu.blocks):
        assert torch.equal(a.indptr.cpu(), b.indptr) and torch.equal(a.indices.cpu(), b.indices)
    # A CUDA generator keeps the draws on the GPU; the blocks still follow the convention.
    on_gpu_gen = TorchSampler(torch.from_numpy(indptr).to(cuda), torch.from_numpy(indices).to(cuda), [5, 3])
    sampled = on_gpu_gen.sample(seeds.to(cuda), torch.Generator(cuda).manual_seed(8))
    _check_blocks(SampledBlocks(sampled.input_nodes.cpu(), [b.to("cpu") for b in sampled.blocks]),
                  indptr, indices, [5, 3], seeds.numpy())


HIDE_DGL_AND_SAMPLE = HIDE_DGL + r'''
import sys
import numpy as np

from strata.graph.sampler import make_sampler
from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, sample_step

indptr = np.array([0, 2, 5, 5, 6]); indices = np.array([1, 2, 0, 2, 3, 0])
plan = EpochPlan(np.arange(4), 2, seed=0)
batch = sample_step(NeighbourSampler(indptr, indices, [2, 2]), plan, plan.order(0), 0, 0)
blocks = batch.to_graph_blocks()
try:
    make_sampler(indptr, indices, [2], backend="dgl")
except ImportError as e:
    print("dgl backend:", e)
assert not any(name == "dgl" or name.startswith("dgl.") for name in sys.modules), "something imported DGL"
print("sampled without DGL:", len(blocks), "blocks")
'''


def test_sampling_and_packing_need_no_dgl() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", HIDE_DGL_AND_SAMPLE], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sampled without DGL: 2 blocks" in result.stdout and "dgl backend: No module named 'dgl'" in result.stdout
