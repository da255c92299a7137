"""strata: train GNNs and diffusion models on graphs and data sets that outgrow one machine."""

__version__ = "0.1.0"
