"""Pipeline schedules as data: per stage, the ordered instructions of one training pass.

A schedule is a pure function ``(stage, num_stages, num_chunks) -> list[Instruction]``; one
interpreter (:mod:`strata.runtime.pipeline.interpreter`) runs a stage's instructions for every
pipeline, and :func:`simulate` runs all stages' lists against each other with no processes at
all, so a schedule is checked before it runs:
every chunk passes every stage forward, then backward, exactly once, and no stage waits for a
message that is never sent.

Sends do not block (the interpreter posts them asynchronously); receives block until the
matching send has been posted. Under those rules:

- ``gpipe``: fill and drain. All forwards, then all backwards in reverse chunk order; keeps
  every chunk's activations until its backward (memory grows with the number of chunks).
- ``1f1b``: after ``num_stages - stage - 1`` warm-up forwards each stage alternates one
  forward and one backward, so at most ``num_stages - stage`` chunks are in flight per stage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Instruction:
    chunk: int


class RecvActivation(Instruction):
    """Receive chunk's input activations from the previous stage."""


class Forward(Instruction):
    """Run this stage's layers forward on the chunk (the last stage also computes its loss)."""


class SendActivation(Instruction):
    """Send the chunk's output activations to the next stage."""


class RecvGrad(Instruction):
    """Receive the gradient of the chunk's outputs from the next stage."""


class Backward(Instruction):
    """Back-propagate the chunk through this stage's layers."""


class SendGrad(Instruction):
    """Send the gradient of the chunk's inputs to the previous stage."""


def _forward(stage: int, num_stages: int, chunk: int) -> list[Instruction]:
    out: list[Instruction] = []
    if stage > 0:
        out.append(RecvActivation(chunk))
    out.append(Forward(chunk))
    if stage < num_stages - 1:
        out.append(SendActivation(chunk))
    return out


def _backward(stage: int, num_stages: int, chunk: int) -> list[Instruction]:
    out: list[Instruction] = []
    if stage < num_stages - 1:
        out.append(RecvGrad(chunk))
    out.append(Backward(chunk))
    if stage > 0:
        out.append(SendGrad(chunk))
    return out


def _check(stage: int, num_stages: int, num_chunks: int) -> None:
    if num_stages < 1 or num_chunks < 1 or not 0 <= stage < num_stages:
        raise ValueError(f"bad schedule shape: stage {stage} of {num_stages}, {num_chunks} chunks")


def gpipe(stage: int, num_stages: int, num_chunks: int) -> list[Instruction]:
    """All forwards in chunk order, then all backwards in reverse order."""
    _check(stage, num_stages, num_chunks)
    out: list[Instruction] = []
    for chunk in range(num_chunks):
        out += _forward(stage, num_stages, chunk)
    for chunk in reversed(range(num_chunks)):
        out += _backward(stage, num_stages, chunk)
    return out


def one_f_one_b(stage: int, num_stages: int, num_chunks: int) -> list[Instruction]:
    """Warm-up forwards, then one forward and one backward in turn, then the remaining backwards."""
    _check(stage, num_stages, num_chunks)
    warmup = min(num_stages - stage - 1, num_chunks)
    out: list[Instruction] = []
    for chunk in range(warmup):
        out += _forward(stage, num_stages, chunk)
    backward_next = 0
    for chunk in range(warmup, num_chunks):
        out += _forward(stage, num_stages, chunk)
        out += _backward(stage, num_stages, backward_next)
        backward_next += 1
    for chunk in range(backward_next, num_chunks):
        out += _backward(stage, num_stages, chunk)
    return out


SCHEDULES: dict[str, Callable[[int, int, int], list[Instruction]]] = {"gpipe": gpipe, "1f1b": one_f_one_b}


@dataclass
class Simulation:
    """What running every stage's instructions against each other showed."""

    ticks: int
    """Time steps until every stage finished, with a forward or backward costing one tick."""
    busy: list[int]
    """Forward plus backward ticks per stage."""
    max_in_flight: list[int]
    """Most chunks a stage held between their forward and their backward."""

    @property
    def bubble_ratio(self) -> float:
        """Idle share of all stage-ticks."""
        return 1.0 - sum(self.busy) / (self.ticks * len(self.busy))


class ScheduleError(AssertionError):
    """A schedule that deadlocks or does not run every chunk through every stage once."""


def _compute(
    op: Instruction,
    s: int,
    num_stages: int,
    done: dict[tuple[str, int], set[int]],
    in_flight: list[int],
    max_in_flight: list[int],
) -> None:
    c = op.chunk
    if isinstance(op, Forward):
        if c in done[("F", s)]:
            raise ScheduleError(f"stage {s} runs chunk {c} forward twice")
        if s > 0 and c not in done[("F", s - 1)]:
            raise ScheduleError(f"stage {s} runs chunk {c} forward before receiving it")
        done[("F", s)].add(c)
        in_flight[s] += 1
        max_in_flight[s] = max(max_in_flight[s], in_flight[s])
        return
    if c not in done[("F", s)]:
        raise ScheduleError(f"stage {s} runs chunk {c} backward before forward")
    if c in done[("B", s)]:
        raise ScheduleError(f"stage {s} runs chunk {c} backward twice")
    if s < num_stages - 1 and c not in done[("B", s + 1)]:
        raise ScheduleError(f"stage {s} runs chunk {c} backward before its gradient arrived")
    done[("B", s)].add(c)
    in_flight[s] -= 1


def simulate(programs: list[list[Instruction]], num_chunks: int) -> Simulation:
    """Run the stages' programs in lockstep; raises ScheduleError on deadlock or a wrong order."""
    num_stages = len(programs)
    pc = [0] * num_stages
    mailbox: dict[tuple[str, int, int], int] = defaultdict(int)  # (kind, to_stage, chunk) -> posted
    done: dict[tuple[str, int], set[int]] = defaultdict(set)  # ("F"|"B", stage) -> chunks
    busy, in_flight, max_in_flight = [0] * num_stages, [0] * num_stages, [0] * num_stages
    ticks = 0
    while any(pc[s] < len(programs[s]) for s in range(num_stages)):
        ticks += 1
        progressed = False
        posted: list[tuple[str, int, int]] = []
        for s in range(num_stages):
            computed = False
            # Messaging is free; each stage runs at most one forward or backward per tick.
            while pc[s] < len(programs[s]):
                op = programs[s][pc[s]]
                c = op.chunk
                if isinstance(op, (RecvActivation, RecvGrad)):
                    kind = "act" if isinstance(op, RecvActivation) else "grad"
                    if mailbox[(kind, s, c)] == 0:
                        break
                    mailbox[(kind, s, c)] -= 1
                elif isinstance(op, SendActivation):
                    if c not in done[("F", s)]:
                        raise ScheduleError(f"stage {s} sends chunk {c}'s activations before computing them")
                    posted.append(("act", s + 1, c))
                elif isinstance(op, SendGrad):
                    if c not in done[("B", s)]:
                        raise ScheduleError(f"stage {s} sends chunk {c}'s gradient before computing it")
                    posted.append(("grad", s - 1, c))
                elif computed:
                    break
                else:
                    _compute(op, s, num_stages, done, in_flight, max_in_flight)
                    busy[s] += 1
                    computed = True
                pc[s] += 1
                progressed = True
        for message in posted:
            mailbox[message] += 1
        if not progressed and not posted:
            waiting = {s: programs[s][pc[s]] for s in range(num_stages) if pc[s] < len(programs[s])}
            raise ScheduleError(f"deadlock: stages wait forever on {waiting}")
    for s in range(num_stages):
        for kind in ("F", "B"):
            if done[(kind, s)] != set(range(num_chunks)):
                missing = set(range(num_chunks)) - done[(kind, s)]
                raise ScheduleError(f"stage {s} never ran chunks {sorted(missing)} {'forward' if kind == 'F' else 'backward'}")
    leftover = {k: v for k, v in mailbox.items() if v}
    if leftover:
        raise ScheduleError(f"messages sent but never received: {leftover}")
    return Simulation(ticks=ticks, busy=busy, max_in_flight=max_in_flight)
