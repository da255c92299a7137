"""Helpers of the operations tests (tests/ops/): Debian packages
installed on demand, and real servers started on loopback and always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from strata.testing.polling import poll

# Debian's convention for "do not start services from maintainer scripts" (invoke-rc.d).
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def require_commands(commands: list[str], packages: list[str]) -> None:
    """Make ``commands`` available, installing Debian ``packages`` with apt-get when they are
    missing and this process is root; otherwise skip the calling test, saying why."""
    missing = [c for c in commands if _which(c) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"{', '.join(missing)} not installed and cannot be installed here (needs root and apt-get); "
            f"install the Debian packages {' '.join(packages)} to run this test"
        )
    output = _apt_install(packages)
    still = [c for c in commands if _which(c) is None]
    if still:
        pytest.skip(f"apt-get could not install {' '.join(packages)} ({', '.join(still)} still missing):\n{output[-2000:]}")


def _which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def _apt_install(packages: list[str]) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Packages such as prometheus would start their system service at install; keep them from it.
    own_policy = not _POLICY_RC_D.exists()
    if own_policy:
        _POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        _POLICY_RC_D.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        return proc.stdout + proc.stderr
    finally:
        if own_policy:
            _POLICY_RC_D.unlink(missing_ok=True)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 200."""

    def ready() -> bool:
        try:
            http_get(url, timeout=2)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    return ready


@contextmanager
def server(
    argv: list[str], *, ready: Callable[[], bool], log: Path, timeout: float = 60, env: dict | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``argv`` until the block ends, once ``ready()`` says it serves. Its output goes to
    ``log``, shown when it dies or never gets ready; it is stopped however the block ends."""
    handle = log.open("wb")
    proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        def running() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")

        if not poll(ready, timeout, interval=0.2, alive=running):
            raise AssertionError(f"{argv[0]} was not ready within {timeout:g}s:\n{log.read_text()[-3000:]}")
        yield proc
    finally:
        stop(proc)
        handle.close()


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """Terminate one process we started, then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
