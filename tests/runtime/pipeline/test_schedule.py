"""Pipeline schedules, checked without processes: every chunk passes every stage forward then
backward exactly once, and no stage waits on a message that is never sent."""

from __future__ import annotations

import pytest

from strata.runtime.pipeline.schedule import (
    SCHEDULES,
    Backward,
    Forward,
    ScheduleError,
    SendActivation,
    gpipe,
    one_f_one_b,
    simulate,
)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("stages", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("chunks", [1, 2, 3, 4, 7, 16])
def test_every_chunk_passes_every_stage_once(name: str, stages: int, chunks: int) -> None:
    programs = [SCHEDULES[name](s, stages, chunks) for s in range(stages)]
    for _s, program in enumerate(programs):
        forwards = [op.chunk for op in program if isinstance(op, Forward)]
        backwards = [op.chunk for op in program if isinstance(op, Backward)]
        assert sorted(forwards) == list(range(chunks)) and sorted(backwards) == list(range(chunks))
        assert forwards == list(range(chunks)), "forwards run in chunk order (history freshness depends on it)"
        for c in range(chunks):
            assert program.index(Forward(c)) < program.index(Backward(c))
    simulate(programs, chunks)  # raises on deadlock, double runs or orphan messages


@pytest.mark.parametrize("stages, chunks", [(2, 4), (4, 4), (4, 8), (3, 5)])
def test_gpipe_bubble_matches_the_textbook(stages: int, chunks: int) -> None:
    sim = simulate([gpipe(s, stages, chunks) for s in range(stages)], chunks)
    assert sim.ticks == 2 * (chunks + stages - 1)
    assert sim.bubble_ratio == pytest.approx((stages - 1) / (chunks + stages - 1))
    assert sim.max_in_flight == [chunks] * stages


@pytest.mark.parametrize("stages, chunks", [(2, 8), (4, 8), (4, 16)])
def test_1f1b_bounds_chunks_in_flight_at_the_same_bubble(stages: int, chunks: int) -> None:
    sim = simulate([one_f_one_b(s, stages, chunks) for s in range(stages)], chunks)
    assert sim.max_in_flight == [stages - s for s in range(stages)]
    textbook = simulate([gpipe(s, stages, chunks) for s in range(stages)], chunks)
    assert sim.ticks == textbook.ticks


def test_a_missing_send_is_a_deadlock() -> None:
    programs = [gpipe(s, 2, 3) for s in range(2)]
    programs[0].remove(SendActivation(1))
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate(programs, 3)


def test_backward_before_forward_is_caught() -> None:
    programs = [gpipe(0, 1, 2)]
    programs[0].reverse()
    with pytest.raises(ScheduleError, match="backward before forward"):
        simulate(programs, 2)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="bad schedule shape"):
        one_f_one_b(3, 2, 4)
