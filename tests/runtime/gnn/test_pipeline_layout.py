"""The hybrid pipeline's layout and unit plans, checked without processes: rank arithmetic, the
config error, and that a pass's chunks exchange every part's halo exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import ConfigError
from strata.graph.csc import induced_subgraph
from strata.runtime.gnn.executors.pipeline_layout import (
    PipelineLayout,
    chunks_within_parts,
    plan_units,
)
from strata.storage.ingest.common import edges_to_csc


def _graph(num_nodes: int = 80, num_edges: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return edges_to_csc(rng.integers(0, num_nodes, num_edges), rng.integers(0, num_nodes, num_edges), num_nodes, symmetrize=False, where="test")


def test_layout_is_stage_major() -> None:
    layout = PipelineLayout.of(2, 6)
    assert (layout.stages, layout.groups) == (2, 3)
    assert layout.stage_ranks() == [[0, 1, 2], [3, 4, 5]]
    assert [(layout.stage_of(r), layout.part_of(r)) for r in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert layout.rank_of(1, 2) == 5
    assert PipelineLayout.of(0, 4) == PipelineLayout(stages=4, groups=1)  # 0 = one stage per process
    assert PipelineLayout.of(1, 4) == PipelineLayout(stages=1, groups=4)


@pytest.mark.parametrize("stages, world", [(2, 3), (4, 2), (3, 4)])
def test_stages_that_do_not_divide_the_world_are_a_config_error(stages: int, world: int) -> None:
    with pytest.raises(ConfigError, match=rf"pipeline.stages is {stages} but the job has {world} processes"):
        PipelineLayout.of(stages, world)


def _halos(indptr: np.ndarray, indices: np.ndarray, part_of: np.ndarray, parts: int) -> list[np.ndarray]:
    """Halo of each part, straight from the definition: in-neighbours owned elsewhere."""
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cut = part_of[indices] != part_of[dst]
    return [np.unique(indices[cut & (part_of[dst] == g)]) for g in range(parts)]


@pytest.mark.parametrize("parts, chunks", [(1, 3), (2, 3), (3, 4)])
def test_chunks_exchange_every_halo_once_and_cover_every_part(parts: int, chunks: int) -> None:
    indptr, indices = _graph()
    rng = np.random.default_rng(7)
    part_of = rng.integers(0, parts, len(indptr) - 1)
    chunk_of = rng.integers(0, chunks, len(indptr) - 1)
    halos = _halos(indptr, indices, part_of, parts)
    plans = [plan_units(indptr, indices, part_of, chunk_of, g, parts) for g in range(parts)]
    for g, (tables, whole, units) in enumerate(plans):
        table_ids = np.concatenate([tables.owned, tables.halo])
        assert np.array_equal(np.sort(np.concatenate([u.dst for u in units])), np.flatnonzero(part_of == g))
        received = np.concatenate([table_ids[u.recv_rows] for u in units])
        assert np.array_equal(np.sort(received), halos[g])  # each halo node once per pass
        assert np.array_equal(np.sort(table_ids[whole.recv_rows]), halos[g]) and len(whole.stale_rows) == 0
        for c, u in enumerate(units):
            # Every in-edge of the unit is in its block, with the right source node.
            dst = np.repeat(u.dst, np.diff(u.indptr))
            want = sorted(zip(np.repeat(u.dst, np.diff(indptr)[u.dst]), np.concatenate([indices[indptr[v]:indptr[v + 1]] for v in u.dst])))
            assert sorted(zip(dst, u.src[u.indices])) == want
            assert not set(table_ids[u.stale_rows]) & set(u.dst) and np.all(chunk_of[table_ids[u.recv_rows]] == c)
            # What part g sends to part h in chunk c is what h receives from g, in h's order.
            for h in range(parts):
                sent = u.dst[u.send_pos][sum(u.send_counts[:h]) : sum(u.send_counts[: h + 1])]
                other = plans[h][2][c]
                start = sum(other.recv_counts[:g])
                got = np.concatenate([plans[h][0].owned, plans[h][0].halo])[other.recv_rows[start : start + other.recv_counts[g]]]
                assert np.array_equal(sent, got), (g, h, c)


def test_chunks_are_cut_inside_each_part() -> None:
    indptr, indices = _graph(num_nodes=40, num_edges=200)
    part_of = np.arange(40) % 2
    calls = []

    def cut(csc: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
        calls.append((len(csc[0]) - 1, k))
        return np.arange(len(csc[0]) - 1) % k

    chunk_of = chunks_within_parts(indptr, indices, part_of, 3, cut)
    assert calls == [(20, 3), (20, 3)]
    assert all(set(chunk_of[part_of == g]) == {0, 1, 2} for g in range(2))
    sub = induced_subgraph(indptr, indices, np.flatnonzero(part_of == 0))
    sub_indptr, sub_indices = sub.indptr, sub.indices
    dst = np.repeat(np.arange(40), np.diff(indptr))
    inside = (part_of[dst] == 0) & (part_of[indices] == 0)
    assert len(sub_indices) == inside.sum() and sub_indptr[-1] == inside.sum()
