"""The Fabric SDK: `Client` (blocking), `AsyncClient` (asyncio) and `Executor`."""

from fabric.client.aio import AsyncClient
from fabric.client.executor import Executor
from fabric.client.sync import Client

__all__ = ["AsyncClient", "Client", "Executor"]
