"""Simulated endpoints (fabric/endpoint/simulated.py) against a real hub.

One process-level test (a hub and one simulator process holding 50 endpoint
streams, as benchmarks/scale.py runs them) and two in-process ones (hub,
simulated endpoints and client on one event loop over a real gRPC server) for
slots, runtime and cancel.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from benchmarks.common import noop
from fabric.client import AsyncClient, Client
from fabric.endpoint.simulated import SimulatedEndpoint, Simulation
from fabric.launch import spawn, start_hub, stop_all
from fabric.loop import run
from fabric.testing import with_hub


def _wait(what, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


@pytest.mark.processes
def test_fifty_simulated_endpoints_in_one_process(tmp_path: Path) -> None:
    env = {"FABRIC_HOME": str(tmp_path / "home")}
    hub, address = start_hub(tmp_path / "hub.db", "--heartbeat", "1", env=env)
    sim = spawn("simulator", "endpoint", "simulate", "--hub", address, "--count", "50",
                "--workers", "4", "--prefix", "sim", env=env)
    try:
        sim.wait_for(r"^50 simulated endpoints connected", 30)
        with Client(address) as c:
            online = c.wait_for_endpoints(50, timeout=15)
            assert sorted(e.name for e in online) == [f"sim-{i:05d}" for i in range(50)]
            assert all(e.capabilities.workers == 4 for e in online)

            fid = c.register_function(noop)
            ids = c.batch_run(fid, [((), {})] * 500)  # no endpoint named: smallest ETA spreads them
            assert c.get_batch_result(ids, timeout=30) == [None] * 500
            counters = c.status().counters
            assert counters["results"] == 500 and counters["duplicates_dropped"] == 0
            eps = c.endpoints()
            assert sum(e.completed for e in eps) == 500
            assert all(e.completed > 0 for e in eps), "the default policy reached every endpoint"

            sim.terminate()  # SIGTERM: the simulated endpoints drain and disconnect
            assert sim.proc.wait(15) == 0
            # Each task ran exactly once, counted on the simulator's side too.
            done = sim.wait_for(r"stopped: (\d+) tasks completed, (\d+) connects", 1)
            assert (int(done.group(1)), int(done.group(2))) == (500, 50)
            _wait(lambda: not any(e.online for e in c.endpoints()), 10)
    finally:
        stop_all([sim])
        hub.stop()
    assert sim.proc.returncode == 0


def test_slots_bound_concurrency_and_runtime_is_reported(tmp_path: Path) -> None:
    async def body(address: str) -> None:
        async with Simulation(address, 2, workers=2, runtime_s=0.2) as sim, \
                AsyncClient(address) as c:
            await sim.wait_connected(10)
            fid = await c.register_function(noop)
            t0 = time.monotonic()
            peak = [0, 0]  # the most tasks each endpoint ran at once (issue 14: observed,

            async def sample() -> None:  # not inferred from the elapsed time)
                while True:
                    peak[:] = [max(p, len(ep.running)) for p, ep in zip(peak, sim.endpoints)]
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            ids = await c.batch_run(fid, [((), {})] * 8)
            results = await c.wait(ids, 10)
            elapsed = time.monotonic() - t0
            sampler.cancel()
            # 8 tasks on 2 x 2 slots of 0.2 s: two waves, never more than 2 per endpoint.
            assert peak == [2, 2], peak
            assert elapsed >= 0.4, elapsed
            assert {r.runtime_s for r in results} == {0.2}
            assert sorted(ep.completed for ep in sim.endpoints) == [4, 4]
            assert sim.traffic()["completed"] == 8

    with_hub(tmp_path, lambda hub: body(hub.address), timeout=20, heartbeat_period=1.0)


def test_cancel_frees_the_slot_and_the_task_never_completes(tmp_path: Path) -> None:
    async def body(address: str) -> None:
        async with SimulatedEndpoint("slow", address, workers=1, runtime_s=30.0) as ep, \
                AsyncClient(address) as c:
            await ep.wait_connected(10)
            fid = await c.register_function(noop)
            (tid,) = await c.batch_run(fid, [((), {})])
            while tid not in ep.running:
                await asyncio.sleep(0.01)
            assert await c.cancel([tid]) == [tid]
            while ep.running:  # the hub told the endpoint to stop it
                await asyncio.sleep(0.01)
            ep.runtime_s = 0.0  # the freed slot (and its credit) take the next task
            (nxt,) = await c.batch_run(fid, [((), {})])
            (r,) = await c.wait([nxt], 10)
            assert r.task_id == nxt and ep.completed == 1 and tid not in ep.unacked

    with_hub(tmp_path, lambda hub: body(hub.address), timeout=20, heartbeat_period=1.0)


def test_cli_help_names_the_simulator() -> None:
    from click.testing import CliRunner

    from fabric.cli import main

    out = CliRunner().invoke(main, ["endpoint", "simulate", "--help"])
    assert out.exit_code == 0 and re.search(r"--count", out.output)


def test_an_unreachable_hub_is_a_clear_error() -> None:
    from fabric.endpoint.simulated import run_simulated

    with pytest.raises(TimeoutError, match="0 of 2 simulated endpoints connected"):
        run(run_simulated("127.0.0.1:1", 2, connect_timeout=1.0))
