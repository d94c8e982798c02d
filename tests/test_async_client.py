"""AsyncClient used directly (not through the sync Client), against real processes:
the whole surface on one event loop, and `async with` teardown."""

from __future__ import annotations

import asyncio
import sys

import cloudpickle
import pytest

from fabric import errors
from fabric.client import AsyncClient
from fabric.hub.tokens import TokenBook
from fabric.loop import run
from fabric.states import TaskState

pytestmark = pytest.mark.processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x):
    return x * x


def fail(x):
    raise ValueError(f"no {x}")


def test_async_client_end_to_end(local_fabric):
    fab = local_fabric(["one", "two"], workers=1)
    with TokenBook(fab.store) as book:
        bob = book.create("bob")[0]

    async def main() -> None:
        async with AsyncClient(fab.address) as c, AsyncClient(fab.address, token=bob) as b:
            online = await c.wait_for_endpoints(2, timeout=60)
            assert sorted(e.name for e in online) == ["one", "two"]
            assert sorted(e.name for e in await c.endpoints()) == ["one", "two"]
            fid = await c.register_function(square)
            tid = await c.run(7, function_id=fid, endpoint_id="one")
            assert await c.get_result(tid, timeout=30) == 49
            tids = await c.batch_run(fid, [((i,), {}) for i in range(20)])
            assert await c.get_batch_result(tids, timeout=30) == [i * i for i in range(20)]
            # Calls on one loop at once.
            many = await asyncio.gather(*(c.run(i, function_id=fid) for i in range(5)))
            assert await asyncio.gather(*(c.get_result(t, timeout=30) for t in many)) == \
                [0, 1, 4, 9, 16]
            bad = await c.run(3, function_id=await c.register_function(fail))
            with pytest.raises(errors.TaskFailed, match="no 3"):
                await c.get_result(bad, timeout=30)
            rows = {t.task_id: t for t in await c.tasks(limit=100)}
            assert rows[tid].state is TaskState.SUCCESS and rows[tid].endpoint_name == "one"
            assert rows[bad].state is TaskState.FAILED
            status = await c.status()
            assert status.endpoints_online == 2 and status.tasks_by_state["SUCCESS"] >= 26
            # share: bob may use "two" once it is shared with him, not before.
            bfid = await b.register_function(square)
            with pytest.raises(errors.PermissionDenied):
                await b.run(2, function_id=bfid, endpoint_id="two")
            await c.share("endpoint", "two", ["bob"])
            assert await b.get_result(await b.run(2, function_id=bfid, endpoint_id="two"),
                                      timeout=30) == 4
        # async with closed both: they refuse further use.
        with pytest.raises(errors.FabricError, match="closed"):
            await c.status()

    run(main())
