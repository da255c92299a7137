"""Node partitioners, k-hop halo partitions and their quality report, layer-to-stage
assignment for pipelines, and data-set clustering for diffusion experts."""

from strata.partitioners.assign import PARTITIONERS, assign
from strata.partitioners.build import build, partition_store
from strata.partitioners.clustering import ClusterResult, KMeansConfig, cluster_array, cluster_store
from strata.partitioners.config import PartitionConfig
from strata.partitioners.format import Partition, PartitionSet, list_partitions, open_partition
from strata.partitioners.graph import CSCGraph, GraphSource, StoreGraph
from strata.partitioners.report import QualityReport, edge_cut
from strata.partitioners.stages import StageCostModel, assign_stages, layer_costs, split_stages

__all__ = [
    "CSCGraph",
    "ClusterResult",
    "KMeansConfig",
    "StageCostModel",
    "assign_stages",
    "cluster_array",
    "cluster_store",
    "layer_costs",
    "split_stages",
    "GraphSource",
    "PARTITIONERS",
    "Partition",
    "PartitionConfig",
    "PartitionSet",
    "QualityReport",
    "StoreGraph",
    "assign",
    "build",
    "edge_cut",
    "list_partitions",
    "open_partition",
    "partition_store",
]
