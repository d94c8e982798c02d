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


def started_for(root: Path) -> list[psutil.Process]:
    """Processes other than this one whose FABRIC_HOME lies under `root`: what a test
    started there, even where it is no descendant of pytest (a `--detach`ed endpoint,
    the hub and endpoints of a demo that was killed)."""
    prefix = str(root)
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            home = p.environ().get("FABRIC_HOME", "")
            if home == prefix or home.startswith(prefix + os.sep):
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        except (psutil.Error, OSError):  # gone, or not ours to read
            continue
    return found


def _reap(procs: list[psutil.Process]) -> list[tuple[int, list[str]]]:
    """Wait up to 10 s for `procs` to exit; SIGKILL the rest and name them."""
    _, alive = psutil.wait_procs(procs, timeout=10)
    named = []
    for p in alive:
        try:
            named.append((p.pid, p.cmdline()))
            p.kill()
        except psutil.Error:
            pass
    return named


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory):
    """The suite must not leave a hub, endpoint or worker running."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftovers = {p.pid: p for p in me.children(recursive=True) if p.pid not in before}
    leftovers.update((p.pid, p) for p in started_for(tmp_path_factory.getbasetemp()))
    alive = _reap(list(leftovers.values()))
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture(autouse=True)
def nothing_left_by_this_test(request, tmp_path):
    """What a test started with FABRIC_HOME in its own tmp_path ends with the test
    (fixtures that outlive it keep theirs elsewhere: the session check sees those)."""
    yield
    alive = _reap(started_for(tmp_path))
    assert not alive, f"{request.node.nodeid} left processes behind: {alive}"


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
