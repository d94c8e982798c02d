"""The endpoint: dials out to a hub and runs tasks on a pool of worker processes."""

from __future__ import annotations

import asyncio
import signal

from fabric.endpoint.agent import Endpoint, EndpointConfig


def run_endpoint(cfg: EndpointConfig) -> None:
    """Run an endpoint in this process until SIGINT/SIGTERM (used by `fabric endpoint start`)."""
    from fabric.loop import run

    async def main() -> None:
        ep = Endpoint(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(ep.shutdown()))
        await ep.start()
        print(f"fabric endpoint {cfg.name} started: {cfg.workers} workers, hub {cfg.hub}",
              flush=True)
        await ep.wait_closed()

    run(main())


__all__ = ["Endpoint", "EndpointConfig", "run_endpoint"]
