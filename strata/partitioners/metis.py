"""METIS through DGL, balancing nodes, in-edges and training nodes as multiple constraints.

METIS needs the whole graph in memory (DGL symmetrises it first); for graphs that do not fit,
use the streaming ``fennel`` or ``ldg``. DGL's METIS takes no seed: its result is
deterministic for a given graph, and ``seed`` is ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from strata.errors import PartitionError
from strata.partitioners.config import PartitionConfig
from strata.partitioners.graph import GraphSource

log = logging.getLogger(__name__)

METIS_BYTES_PER_ITEM = 152
"""Peak memory of METIS through DGL per node plus edge: the CSC (8 B each) and, measured on
random graphs of 1.8M and 7.2M nodes+edges, 128-142 B more (DGL's graph, its symmetrised
copy, METIS's CSR and weights, and the coarsened graphs)."""


def metis_memory_estimate(num_nodes: int, num_edges: int) -> int:
    """Bytes METIS is expected to need for a graph of this size."""
    return METIS_BYTES_PER_ITEM * (int(num_nodes) + int(num_edges))


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (memory a process can take without swapping), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_metis_fits(graph: GraphSource, cfg: PartitionConfig) -> None:
    """Refuse, before anything is loaded, a graph METIS would need more memory for than there is."""
    need = metis_memory_estimate(graph.num_nodes, graph.num_edges)
    limit = int(cfg.memory_limit_bytes) or available_memory()
    if need > limit:
        source = "the limit given" if cfg.memory_limit_bytes else "available on this machine"
        raise PartitionError(
            f"METIS on {graph.where} ({graph.num_nodes:,} nodes, {graph.num_edges:,} edges) would need about "
            f"{need / 2**30:.1f} GiB of memory (~{METIS_BYTES_PER_ITEM} bytes per node and edge: the graph, DGL's "
            f"symmetrised copy and METIS's coarsened graphs), but {limit / 2**30:.1f} GiB are {source}: it would be "
            "killed partway. Use --method fennel (streaming, memory O(nodes + one chunk of edges))"
        )


def metis_assign(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    n, k = graph.num_nodes, int(cfg.num_parts)
    if k == 1:
        return np.zeros(n, dtype=np.int32)  # DGL's METIS crashes the process for k = 1
    check_metis_fits(graph, cfg)
    import torch

    try:
        from strata._dgl import dgl
    except ImportError as exc:
        raise PartitionError(
            f"METIS comes from DGL here, and DGL does not import ({exc}). Install it (pip install dgl==2.1.0; "
            "a CPU build, enough for METIS), or partition with --method fennel, which needs no DGL"
        ) from exc

    indptr, indices = graph.csc()
    g = dgl.graph(
        ("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.empty(0, dtype=torch.int64))),
        num_nodes=n,
    )
    ntypes, balance_edges = _constraints(graph, indptr)
    with _captured_output() as captured:
        parts = dgl.metis_partition_assignment(g, k, balance_ntypes=ntypes, balance_edges=balance_edges)
    for line in captured.getvalue().splitlines():
        log.debug("dgl metis: %s", line)
    if parts is None:
        raise PartitionError(f"DGL's METIS returned no assignment for {graph.where} into {k} parts")
    return np.asarray(parts.numpy() if hasattr(parts, "numpy") else parts, dtype=np.int32)


def _constraints(graph: GraphSource, indptr: np.ndarray) -> tuple[object | None, bool]:
    """Training/non-training as node types and in-degree as edge weight, where METIS can use them.

    A constraint whose weights are all zero makes METIS divide by zero and kill the process,
    so a node type with no in-edges turns edge balancing off.
    """
    import torch

    n = graph.num_nodes
    deg = np.diff(indptr)
    train = graph.train_ids()
    mask = np.zeros(n, dtype=np.int64)
    mask[train] = 1
    ntypes = None
    groups = [np.ones(n, dtype=bool)]
    if 0 < int(mask.sum()) < n:
        ntypes = torch.from_numpy(mask)
        groups = [mask == 0, mask == 1]
    balance_edges = all(int(deg[g].sum()) > 0 for g in groups)
    return ntypes, balance_edges


@contextlib.contextmanager
def _captured_output() -> Iterator[io.StringIO]:
    """Capture what DGL prints (Python prints and C-level writes to fd 1 and 2) into one buffer.

    File descriptors are process-wide: output of other threads during METIS is captured too.
    """
    captured = io.StringIO()
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(captured):
                yield captured
        finally:
            libc.fflush(None)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.write(sink.read().decode("utf-8", "replace"))
