"""Node partitioners, k-hop halo partitions and their quality report, layer-to-stage
assignment for pipelines, and data-set clustering for diffusion experts.

One module per idea: :mod:`.assign` (node partitioners), :mod:`.build` and :mod:`.format`
(partitions on disk), :mod:`.report`, :mod:`.streaming`, :mod:`.metis`, :mod:`.stages`,
:mod:`.clustering`; configs in :mod:`.config`.
"""
