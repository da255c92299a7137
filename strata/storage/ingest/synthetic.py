"""Synthetic graphs with a learnable label signal, written chunk by chunk.

Each node gets a class. Its in-degree follows a power law; each in-edge comes from a node of
the same class with probability ``homophily`` and from anywhere otherwise. Sources are chosen
uniformly (``kind="block"``, a stochastic block model) or with R-MAT-like skew, so a few hubs
send most edges (``kind="rmat"``). Features are a class centroid plus Gaussian noise, so
aggregating neighbours denoises them: a GNN beats a per-node classifier.

Destinations are generated block by block, so memory is O(num_nodes + block edges) and a
graph with more edges than RAM can be written; the result does not depend on the block size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from strata.errors import IngestError
from strata.storage import layout
from strata.storage.sorted_unique import sorted_unique
from strata.storage.store import DatasetMeta, DatasetWriter

_GEN_BLOCK = 65_536  # destinations per random stream; fixed so results never depend on chunking


@dataclass
class SyntheticGraphConfig:
    """Shape and signal of a generated graph."""

    num_nodes: int = 20_000
    """Number of nodes."""
    avg_degree: float = 10.0
    """Mean in-degree before duplicate edges are dropped."""
    num_classes: int = 8
    """Number of classes (communities)."""
    feat_dim: int = 64
    """Feature width."""
    homophily: float = 0.8
    """Probability that an in-edge comes from a node of the same class."""
    kind: str = "block"
    """'block' (uniform sources) or 'rmat' (skewed sources: hubs)."""
    power_law_exponent: float = 2.5
    """Exponent of the in-degree distribution (> 2)."""
    feature_noise: float = 3.0
    """Standard deviation of the Gaussian noise around class centroids (centroids have unit scale)."""
    train_fraction: float = 0.6
    valid_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_nodes < 2:
            raise IngestError(f"synthetic.num_nodes must be at least 2, got {self.num_nodes}")
        if self.avg_degree <= 0:
            raise IngestError(f"synthetic.avg_degree must be positive, got {self.avg_degree}")
        if not 1 <= self.num_classes <= self.num_nodes:
            raise IngestError(f"synthetic.num_classes must be in 1..num_nodes, got {self.num_classes}")
        if self.feat_dim < 1:
            raise IngestError(f"synthetic.feat_dim must be at least 1, got {self.feat_dim}")
        if not 0.0 <= self.homophily <= 1.0:
            raise IngestError(f"synthetic.homophily must be in [0, 1], got {self.homophily}")
        if self.kind not in ("block", "rmat"):
            raise IngestError(f"synthetic.kind must be 'block' or 'rmat', got '{self.kind}'")
        if self.power_law_exponent <= 2.0:
            raise IngestError(f"synthetic.power_law_exponent must be > 2 (finite mean degree), got {self.power_law_exponent}")
        if self.train_fraction < 0 or self.valid_fraction < 0 or self.train_fraction + self.valid_fraction > 1:
            raise IngestError("synthetic.train_fraction and valid_fraction must be >= 0 and sum to at most 1")


class _Sources:
    """Draws edge sources: same-class nodes or any node, uniformly or with R-MAT-like skew."""

    def __init__(self, cfg: SyntheticGraphConfig, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=cfg.num_classes)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        # A fixed random ranking spreads the hubs over ids (and over classes).
        self.rank_to_node = rng.permutation(cfg.num_nodes) if cfg.kind == "rmat" else None

    def draw(self, dst_labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        same = rng.random(len(dst_labels)) < self.cfg.homophily
        src = np.empty(len(dst_labels), dtype=np.int64)
        cls = dst_labels[same]
        counts = self.counts[cls]
        pos = np.minimum((self._skew(rng.random(len(cls))) * counts).astype(np.int64), counts - 1)
        src[same] = self.order[self.starts[cls] + pos]
        n = self.cfg.num_nodes
        other = np.minimum((self._skew(rng.random(int((~same).sum()))) * n).astype(np.int64), n - 1)
        src[~same] = self.rank_to_node[other] if self.rank_to_node is not None else other
        return src

    def _skew(self, u: np.ndarray) -> np.ndarray:
        # Cubing a uniform rank makes popularity fall off as rank^(-2/3): a few hubs, a long tail.
        return u**3 if self.cfg.kind == "rmat" else u


def _labels(cfg: SyntheticGraphConfig) -> np.ndarray:
    return np.random.default_rng([cfg.seed, 1]).integers(0, cfg.num_classes, cfg.num_nodes, dtype=np.int64)


def _in_degrees(cfg: SyntheticGraphConfig, rng: np.random.Generator, size: int) -> np.ndarray:
    shape = cfg.power_law_exponent - 1.0
    xmin = cfg.avg_degree * (shape - 1.0) / shape  # Pareto mean = xmin * shape / (shape - 1)
    deg = (rng.pareto(shape, size) + 1.0) * xmin
    return np.clip(np.rint(deg), 0, cfg.num_nodes - 1).astype(np.int64)


def generate_block(cfg: SyntheticGraphConfig, sources: _Sources, labels: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """In-degrees and sorted, de-duplicated sources of destinations [block*B, (block+1)*B)."""
    lo = block * _GEN_BLOCK
    hi = min(cfg.num_nodes, lo + _GEN_BLOCK)
    rng = np.random.default_rng([cfg.seed, 2, block])
    deg = _in_degrees(cfg, rng, hi - lo)
    dst = np.repeat(np.arange(lo, hi, dtype=np.int64), deg)
    src = sources.draw(labels[dst], rng)
    keys = sorted_unique(dst * cfg.num_nodes + src)  # sorts by (dst, src) and drops duplicates
    dst, src = keys // cfg.num_nodes, keys % cfg.num_nodes
    keep = src != dst
    dst, src = dst[keep], src[keep]
    counts = np.bincount(dst - lo, minlength=hi - lo)
    return counts, src


def write_synthetic(
    cfg: SyntheticGraphConfig,
    url: str,
    name: str = "synthetic",
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetMeta:
    """Generate the graph of ``cfg`` and write it as a complete store at ``url``."""
    n = cfg.num_nodes
    labels = _labels(cfg)
    sources = _Sources(cfg, labels, np.random.default_rng([cfg.seed, 3]))
    centroids = np.random.default_rng([cfg.seed, 4]).standard_normal((cfg.num_classes, cfg.feat_dim)).astype(np.float32)
    num_blocks = (n + _GEN_BLOCK - 1) // _GEN_BLOCK
    with DatasetWriter(url, name, num_nodes=n, overwrite=overwrite, source=f"synthetic:{cfg.kind}") as writer:
        indptr = writer.appender(layout.INDPTR, np.int64)
        indices = writer.appender(layout.INDICES, np.int64)
        feat = writer.appender(layout.FEAT, np.float32, (cfg.feat_dim,))
        indptr.append(np.zeros(1, dtype=np.int64))
        offset = 0
        for block in tqdm(range(num_blocks), desc="generate", unit="block", disable=not progress):
            counts, src = generate_block(cfg, sources, labels, block)
            indptr.append(offset + np.cumsum(counts))
            indices.append(src)
            offset += len(src)
            lo, hi = block * _GEN_BLOCK, min(n, (block + 1) * _GEN_BLOCK)
            noise = np.random.default_rng([cfg.seed, 5, block]).standard_normal((hi - lo, cfg.feat_dim), dtype=np.float32)
            feat.append(centroids[labels[lo:hi]] + cfg.feature_noise * noise)
        writer.write(layout.LABEL, labels)
        perm = np.random.default_rng([cfg.seed, 6]).permutation(n)
        n_train = int(cfg.train_fraction * n)
        n_valid = int(cfg.valid_fraction * n)
        writer.write(layout.split_key("train"), np.sort(perm[:n_train]))
        writer.write(layout.split_key("valid"), np.sort(perm[n_train : n_train + n_valid]))
        writer.write(layout.split_key("test"), np.sort(perm[n_train + n_valid :]))
        return writer.commit(num_classes=cfg.num_classes, synthetic=dataclasses.asdict(cfg))
