"""Seeds derived from a run's seed, one per purpose and position, equal in every process.

Offline sampling (:mod:`strata.storage.featstore.sampling`) and the diffusion jobs draw each
step's randomness from a generator seeded here, so a step depends only on its position: a
resumed run, a packer in another process and N ranks all see the same draws.
"""

from __future__ import annotations

import numpy as np


def step_seed(seed: int, purpose: int, *position: int) -> int:
    """A seed for one ``purpose`` at one ``position`` (an epoch, a step, or both) of a run.

    The value is fixed by the arguments, in this order: packs and checkpoints record data
    positions whose batches must be drawn again exactly, so it must never change.
    """
    # Kept below 2**31 so it also suits generators that take a signed 32-bit seed.
    return int(np.random.SeedSequence([seed, purpose, *position]).generate_state(1, dtype=np.uint32)[0] >> 1)
