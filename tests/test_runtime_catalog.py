"""`fabric endpoint runtimes NAME [--prune]`: what an endpoint built, listed and
removed, without the endpoint running; pruning never follows the link each
runtime has to the endpoint's own fabric package."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fabric
from fabric.endpoint.outbox import StateDir
from fabric.endpoint.runtimes import RuntimeCache
from fabric.runtime_spec import Runtime
from fabric.testing import pypi_reachable

pytestmark = pytest.mark.skipif(not pypi_reachable(), reason="PyPI (pypi.org) is not reachable "
                                "from this machine: runtime builds install from it")
HUMANIZE = Runtime(pip=["humanize>=4"])


def fabric_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FABRIC_HOME": str(home), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "fabric", "endpoint", "runtimes", *args],
                          env=env, text=True, capture_output=True, timeout=60)


def test_list_then_prune_what_an_endpoint_built(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FABRIC_HOME", str(home))
    state = StateDir("lab")
    own_package = Path(fabric.__file__).resolve().parent
    before = sorted(p.name for p in own_package.iterdir())

    async def build() -> Path:
        cache = RuntimeCache(state.path / "runtimes")
        await cache.sweep()
        built = await cache.get(HUMANIZE)  # a real venv, a real pip install
        await cache.close()
        assert built.path is not None
        return built.path

    path = asyncio.run(build())
    assert (path / "lib").is_dir()

    listed = fabric_cli(home, "lab")
    assert listed.returncode == 0, listed.stderr
    assert HUMANIZE.digest[:12] in listed.stdout and "humanize" in listed.stdout
    assert " MiB" in listed.stdout and "3.11" in listed.stdout

    # Used just now: not older than a day, so it stays.
    kept = fabric_cli(home, "lab", "--prune", "--older-than", "1d")
    assert kept.returncode == 0 and "removed 0 runtimes" in kept.stdout, kept
    assert path.is_dir()

    # A running endpoint may be using them: pruning waits until it is stopped.
    state.lock()  # this process holds the endpoint's lock and pid file, as a running one does
    try:
        refused = fabric_cli(home, "lab", "--prune")
        assert refused.returncode == 1 and "is running" in refused.stderr, refused
        assert path.is_dir()
    finally:
        state.unlock()

    pruned = fabric_cli(home, "lab", "--prune")
    assert pruned.returncode == 0 and "removed 1 runtimes" in pruned.stdout, pruned
    assert not path.exists()
    # The runtime's `fabric` link was removed, not followed into the endpoint's package.
    assert sorted(p.name for p in own_package.iterdir()) == before
    assert "no runtimes" in fabric_cli(home, "lab").stdout
