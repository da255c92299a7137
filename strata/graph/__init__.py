"""Device-agnostic graph tensors and their kernels: ``block.Block`` (CSC, src/dst ids, degrees),
``ops`` (the aggregations of GCN, GraphSAGE, GAT and GCNII on DGL's or torch's kernels) and the
CSC helpers the partitioners, samplers and executors share."""
