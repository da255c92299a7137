"""The one place strata imports DGL.

PyPI's dgl 2.1.0 ships its GraphBolt C++ library only for torch 2.0-2.2, and ``import dgl``
under a newer torch fails inside ``dgl.graphbolt``. strata uses DGL's core (graphs, blocks,
neighbour samplers, ``dgl.nn`` layers, METIS), which works once ``dgl.graphbolt`` is kept
from loading. Every other module does ``from strata._dgl import dgl`` (or ``DGLBlock``, the class
of a block made from a raw graph index).
"""

from __future__ import annotations

import logging
import os
import sys
import types

log = logging.getLogger(__name__)


def _graphbolt_library_matches_torch() -> bool:
    import importlib.util

    import torch

    spec = importlib.util.find_spec("dgl")
    if spec is None or not spec.submodule_search_locations:
        return False
    version = torch.__version__.split("+")[0]
    for root in spec.submodule_search_locations:
        if os.path.exists(os.path.join(root, "graphbolt", f"libgraphbolt_pytorch_{version}.so")):
            return True
    return False


def _import_dgl() -> types.ModuleType:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    if sys.modules.get("dgl") is not None:  # None there means "unimportable": the import below says so
        return sys.modules["dgl"]
    if not _graphbolt_library_matches_torch() and "dgl.graphbolt" not in sys.modules:
        sys.modules["dgl.graphbolt"] = types.ModuleType("dgl.graphbolt")
        # Said only with -v: it is how strata always runs DGL here, nothing a user need act on.
        log.debug(
            "dgl.graphbolt disabled: its C++ library does not match this torch; "
            "strata uses DGL's core graphs, samplers, dgl.nn and METIS only"
        )
    import dgl as _dgl

    return _dgl


dgl = _import_dgl()
from dgl.heterograph import DGLBlock  # noqa: E402  (after the graphbolt guard above)

__all__ = ["DGLBlock", "dgl"]
