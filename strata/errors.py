"""Errors meant for people: each says what was expected, what was found and what to do."""


class StrataError(Exception):
    """Base class of every error strata raises on purpose."""


class StoreError(StrataError):
    """A dataset store is missing, incomplete, corrupt or of the wrong shape."""


class IngestError(StrataError):
    """Raw input cannot be turned into a dataset store."""


class ConfigError(StrataError):
    """A configuration file has an unknown key or a bad value."""


class CheckpointError(StrataError):
    """A checkpoint is missing, incomplete or does not fit the run."""


class PartitionError(StrataError):
    """A partitioning request is invalid, or a partition on disk is missing or incomplete."""


class PackError(StoreError):
    """A pack of offline-sampled batches is missing, incomplete, corrupt or made for another run."""


class Preempted(StrataError):
    """Training stopped on a signal (SIGTERM, SIGUSR1, SIGINT) after writing a checkpoint."""

    exit_code = 75
    """EX_TEMPFAIL: try again later (with --resume); distinct from a failure (1, 2)."""
