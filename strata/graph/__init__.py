"""Device-agnostic graph tensors and the CSC helpers the partitioners, samplers and executors share."""
