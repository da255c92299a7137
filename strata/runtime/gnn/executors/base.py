"""What a node-classification executor offers its job, how one is built, and the batches and
score reduction the executors share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from strata.models.gnn import LayeredModel
from strata.runtime.config import DataConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.gnn.config import PipelineConfig, TrainConfig
from strata.runtime.gnn.data import NodeData
from strata.runtime.loop import ExecutorStats, StepOutput
from strata.storage.featstore.config import FeaturesConfig


@dataclass
class FullGraphStep:
    """The one step of an epoch of full-graph training: every training node at once."""

    epoch: int

    def __len__(self) -> int:
        return 1


class GNNExecutor(Protocol):
    """Runs the steps of a node-classification job on this rank (see :class:`strata.runtime.loop.Executor`)."""

    model: nn.Module

    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch."""
        ...

    def epoch(self, epoch: int, start: int) -> Iterator[object]:
        """The micro-batches of ``epoch`` from micro-batch ``start`` on; a pure function of (seed, epoch, position)."""
        ...

    def forward_backward(self, batch: object, scale: float) -> StepOutput: ...

    def zero_grad(self) -> None: ...

    def optimizer_step(self) -> None: ...

    def stats(self) -> ExecutorStats: ...

    def evaluate(self) -> dict[str, float]:
        """``<split>_loss`` and ``<split>_acc`` of every non-empty split, the same on every rank."""
        ...

    def close(self) -> None: ...


@dataclass
class BuildContext:
    """Everything an executor's ``build`` may use; it takes what it needs."""

    train: TrainConfig
    pipeline: PipelineConfig
    features: FeaturesConfig | None
    data_cfg: DataConfig
    model: LayeredModel
    optimizer: torch.optim.Optimizer
    comm: Comm
    device: str
    load_data: Callable[[], NodeData]
    """The whole data set in memory (features spilled to a memory-mapped file when the
    features config serves them from the store); loaded on first call."""


def split_scores(names: Sequence[str], loss_sums: Sequence[float], correct: Sequence[float], sizes: dict[str, int],
                 comm: Comm) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_acc`` from each rank's sums over its share of every split
    (one all-reduce), divided by the split's global size."""
    sums = [value for pair in zip(loss_sums, correct) for value in pair]
    totals = comm.sum_floats(sums) if comm.world_size > 1 else sums
    out = {}
    for i, name in enumerate(names):
        out[f"{name}_loss"] = totals[2 * i] / sizes[name]
        out[f"{name}_acc"] = totals[2 * i + 1] / sizes[name]
    return out


def score_sums(logits: Tensor, label: Tensor) -> tuple[float, float]:
    """(summed cross-entropy, correct predictions) of ``logits`` against ``label``."""
    if len(label) == 0:
        return 0.0, 0.0
    loss = torch.nn.functional.cross_entropy(logits.float(), label, reduction="sum")
    return float(loss), float((logits.argmax(1) == label).sum())

