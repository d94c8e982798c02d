"""Background jobs have an owner that stops and awaits them (fabric/jobs.py), and a
hub that shuts down leaves none of its jobs running on the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fabric.hub.server import Hub, HubConfig
from fabric.jobs import Jobs


def test_stop_cancels_and_awaits_every_job_and_a_death_is_logged(caplog):
    async def main() -> None:
        jobs = Jobs("test")
        ended = []

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # cleanup that needs the loop: stop() must await it
                ended.append("forever")

        async def dies() -> None:
            raise ValueError("boom")

        jobs.start(forever(), "forever")
        doomed = jobs.start(dies(), "dies")
        await asyncio.wait([doomed])
        await asyncio.sleep(0)  # its done-callback runs
        assert len(jobs) == 1
        await jobs.stop()
        assert ended == ["forever"] and len(jobs) == 0
        with pytest.raises(RuntimeError, match="shutting down"):
            jobs.start(forever())

    with caplog.at_level(logging.ERROR, logger="fabric"):
        asyncio.run(main())
    assert "test: background job dies died" in caplog.text and "boom" in caplog.text


def test_a_hub_that_shut_down_leaves_no_task_of_its_own(tmp_path):
    async def main() -> None:
        before = asyncio.all_tasks()
        hub = Hub(HubConfig(port=0, store_path=str(tmp_path / "hub.db"), auth=True,
                            heartbeat_period=0.05))
        await hub.start()
        await hub.shutdown()
        left = asyncio.all_tasks() - before - {asyncio.current_task()}
        assert not left, left

    asyncio.run(main())

