"""The Fabric SDK: `Client` (blocking), `AsyncClient` (asyncio), `Executor` and `Runtime`."""

from fabric.client.aio import AsyncClient
from fabric.client.executor import Executor
from fabric.client.sync import Client
from fabric.runtime_spec import Runtime

__all__ = ["AsyncClient", "Client", "Executor", "Runtime"]
