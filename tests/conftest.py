"""Shared fixtures: real hub and endpoint processes on loopback, and a leak check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fabric.client import Client  # noqa: E402
from fabric.launch import LocalFabric  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """The suite must not leave a hub, endpoint or worker running."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
    gone, alive = psutil.wait_procs(leftovers, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"processes left behind: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture(scope="module")
def fabric_procs(tmp_path_factory):
    """A hub and two endpoints (alpha, beta; 2 workers each) as real processes."""
    with LocalFabric(tmp_path_factory.mktemp("fabric"), ["alpha", "beta"], workers=2,
                     hub_args=("--max-payload", str(64 * 2**20))) as fab:
        with Client(fab.address) as c:
            c.wait_for_endpoints(2, timeout=60)
        yield fab


@pytest.fixture
def client(fabric_procs):
    with Client(fabric_procs.address) as c:
        yield c


@pytest.fixture
def local_fabric(tmp_path):
    """A factory for LocalFabrics owned by one test: `fab = local_fabric(["a", "b"], ...)`.

    Each one is stopped at teardown, whatever happened, and every child's
    output is printed then (pytest shows it only when the test failed)."""
    made: list[LocalFabric] = []

    def make(endpoints: int | list[str] = 2, **kwargs) -> LocalFabric:
        fab = LocalFabric(tmp_path / f"fabric{len(made)}", endpoints, **kwargs)
        made.append(fab)
        return fab.start()

    yield make
    for fab in made:
        try:
            print(fab.output())
        finally:
            fab.stop()
