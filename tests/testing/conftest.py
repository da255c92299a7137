"""Fixtures of the emulated-cluster tests: they need root (namespaces, a bridge, tc), and they
clear the leftovers of earlier runs that were killed before they could clean up."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def as_root() -> None:
    """Skip, saying why, unless this process can build an emulated cluster."""
    if os.geteuid() != 0:
        pytest.skip("the emulated cluster needs root (network namespaces, a bridge, tc qdiscs); run the tests as root")
    missing = [tool for tool in ("ip", "tc", "unshare") if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin"))]
    if missing:
        pytest.skip(f"the emulated cluster needs {', '.join(missing)} (iproute2, util-linux), not installed here")
    from strata.testing.cluster import Cluster, ClusterConfig, ClusterError, cleanup

    cleanup(include_up=False)  # leftovers of a killed run (not clusters someone left up with 'up')
    try:
        with Cluster(ClusterConfig(hosts=1, rate="1gbit")):
            pass
    except ClusterError as exc:
        if "not permitted" not in str(exc).lower() and "permission" not in str(exc).lower():
            raise
        pytest.skip(f"this root cannot build network namespaces (a container without CAP_NET_ADMIN/CAP_SYS_ADMIN?): {exc}")
