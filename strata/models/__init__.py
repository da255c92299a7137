"""Models as ordered lists of layers, so executors can cut them into stages: GNNs in
:mod:`strata.models.gnn` (config in :mod:`strata.models.config`), diffusion models in
:mod:`strata.models.diffusion`."""
