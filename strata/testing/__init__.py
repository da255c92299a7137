"""Test and benchmark tools that sit beside the package (nothing in strata imports them): the
emulated cluster, :mod:`strata.testing.cluster`."""
