"""The out-of-core tiered feature store (DiskGNN style).

``strata pack`` samples the batches of a run ahead of training and packs each batch's input
features contiguously (:mod:`.writer`, format in :mod:`.format`); training reads them back
sequentially (:mod:`.reader`), with hot nodes in device and host caches (:mod:`.caches`,
:mod:`.tiered`), loaded ahead on background threads (:mod:`.prefetch`). Sampling itself
(:mod:`.sampling`) is shared with online training, so every mode trains on the same batches.
"""

from strata.storage.featstore.config import FeaturesConfig

__all__ = ["FeaturesConfig"]
