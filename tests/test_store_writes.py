"""Two store writes per task: its insert, and its finish (with "collected" folded in
when a client waits for it). That a task was sent to an endpoint lives in memory.

In process: a hub, a simulated endpoint (the real link protocol, no worker
processes) and a client on one loop over a real gRPC server. Every statement
the hub's SQLite connection runs is traced, so the count is what the store
was asked to do, row by row, not what a counter claims.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from benchmarks.common import noop
from fabric.client import AsyncClient
from fabric.endpoint.simulated import SimulatedEndpoint
from fabric.hub.server import Hub
from fabric.states import TaskState
from fabric.testing import with_hub

TASK_WRITE = re.compile(r"^\s*(INSERT\b.*\bINTO tasks\b|UPDATE tasks\b)", re.IGNORECASE | re.DOTALL)


def test_a_task_a_client_waits_for_costs_two_writes(tmp_path: Path) -> None:
    async def body(hub: Hub) -> None:
        writes: list[str] = []
        async with SimulatedEndpoint("sim", hub.address, workers=4) as ep, \
                AsyncClient(hub.address) as c:
            await ep.wait_connected(10)
            fid = await c.register_function(noop)
            # A first wait opens the client's result stream; from then on results are
            # pushed as soon as they are stored. (A result stored while no stream is
            # open is marked collected when it is fetched: a third write, for
            # fire-and-forget.)
            assert await c.wait(await c.batch_run(fid, [((), {})]), 30)
            await hub.store.flush()
            # The store thread and the loop both run statements: list.append is atomic.
            hub.store._conn.set_trace_callback(lambda sql: TASK_WRITE.match(sql) and
                                               writes.append(sql))
            ids = await c.batch_run(fid, [((), {})] * 50)
            assert await c.wait(ids, 30)
            await hub.store.flush()
            hub.store._conn.set_trace_callback(None)
        inserts = [w for w in writes if w.lstrip().upper().startswith("INSERT")]
        others = [w[:60] for w in writes if not w.lstrip().upper().startswith("INSERT")]
        assert (len(inserts), len(others)) == (50, 50), sorted(set(others))
        rows = await hub.store.get_tasks(ids)
        assert {r.state for r in rows.values()} == {TaskState.SUCCESS}
        marks = ",".join("?" * len(ids))
        collected = await hub.store.read(lambda conn: conn.execute(
            f"SELECT COUNT(*) FROM tasks WHERE collected_at IS NOT NULL AND task_id IN ({marks})",
            ids).fetchone()[0])
        assert collected == 50, "collected, in the same write as the finish"

    with_hub(tmp_path, body, heartbeat_period=1.0)


def test_unfinished_tasks_show_where_they_run_from_memory(tmp_path: Path) -> None:
    """Nothing is written when a task is sent, yet listings and counts say it runs."""
    async def body(hub: Hub) -> None:
        async with SimulatedEndpoint("slow", hub.address, workers=2, runtime_s=30.0) as ep, \
                AsyncClient(hub.address) as c:
            await ep.wait_connected(10)
            fid = await c.register_function(noop)
            ids = await c.batch_run(fid, [((), {})] * 5)
            while len(ep.running) < 2:
                await asyncio.sleep(0.01)
            sent = await c.tasks(state=TaskState.DISPATCHED)
            assert sorted(t.task_id for t in sent) == sorted(ep.running)
            assert {t.endpoint_name for t in sent} == {"slow"}
            queued = await c.tasks(state=TaskState.QUEUED)
            assert len(queued) == 3 and not {t.task_id for t in queued} & set(ep.running)
            by_state = (await c.status()).tasks_by_state
            assert (by_state.get("DISPATCHED"), by_state.get("QUEUED")) == (2, 3), by_state
            assert await c.cancel(ids) == ids

    with_hub(tmp_path, body, heartbeat_period=1.0)
