"""Client: the blocking SDK. It drives an AsyncClient on a private event-loop thread.

One implementation, two faces: every method here hands a coroutine to the
loop thread and waits for it, so the sync and async clients cannot drift.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, Iterable, Sequence, TypeVar

from fabric import config, errors
from fabric.client.aio import AsyncClient
from fabric.loop import new_event_loop
from fabric.models import EndpointInfo, HubStatus, TaskInfo
from fabric.runtime_spec import Runtime
from fabric.states import TaskState

T = TypeVar("T")


class Client:
    """Talk to a hub: register functions, run them, collect results.

    >>> c = Client("127.0.0.1:50051")
    >>> fid = c.register_function(fit)
    >>> tid = c.run(x, y=2, function_id=fid, endpoint_id="laptop")
    >>> c.get_result(tid, timeout=60)
    """

    def __init__(self, address: str = config.DEFAULT_HUB_ADDRESS, *, retry_timeout: float = 30.0,
                 policy: str = "", token: str | None = None, tls_ca: str | None = None) -> None:
        self.address = address
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fabric-client",
                                        daemon=True)
        self._thread.start()
        self.aio: AsyncClient = self._call(_make_async(address, retry_timeout, policy, token, tls_ca))
        self._closed = False

    # ------------------------------------------------------------ plumbing
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if getattr(self, "_closed", False):
            coro.close()
            raise errors.FabricError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the client's loop thread (used by Executor)."""
        self._loop.call_soon_threadsafe(fn, *args)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def close(self) -> None:
        """Flush pending submissions, close streams and stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._call(self.aio.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ API
    def register_function(self, fn: Callable[..., Any], name: str | None = None, *,
                          runtime: Runtime | None = None) -> str:
        """Store `fn` at the hub once; returns its id. Its calls run in `runtime`
        (built once per endpoint) unless they name their own."""
        return self._call(self.aio.register_function(fn, name, runtime=runtime))

    def run(self, *args: Any, function_id: str, endpoint_id: str | None = None,
            policy: str = "", walltime: float = 0.0, max_retries: int | None = None,
            endpoints: Sequence[str] = (), gpus: int = 0, memory: int = 0,
            deadline: float | None = None, fail_fast: bool = False,
            runtime: Runtime | None = None, **kwargs: Any) -> str:
        """Submit one call; returns its task id once the hub has stored it.

        endpoint_id: run exactly there; else `policy` ("smallest-eta", the default,
        "round-robin", "least-loaded", "fastest", "cheapest") picks among `endpoints` (default: all)
        those with `gpus` GPUs and `memory` bytes; `deadline` (s) is for "cheapest".
        `fail_fast`: raise NoEligibleEndpoint / EndpointOffline instead of holding a task
        that no online endpoint can run now. `walltime` (s) kills and fails it if it runs longer; `max_retries` is how
        often it is rerun after its worker dies (default: the endpoint's setting).
        `runtime` replaces the function's runtime for this call."""
        return self._call(self.aio.run(*args, function_id=function_id, endpoint_id=endpoint_id,
                                       policy=policy, walltime=walltime, max_retries=max_retries,
                                       endpoints=endpoints, gpus=gpus, memory=memory,
                                       deadline=deadline, fail_fast=fail_fast, runtime=runtime,
                                       **kwargs))

    def batch_run(self, function_id: str, calls: Iterable[tuple[Sequence[Any], dict[str, Any]]],
                  endpoint_id: str | None = None, policy: str = "", walltime: float = 0.0,
                  max_retries: int | None = None, *, endpoints: Sequence[str] = (),
                  gpus: int = 0, memory: int = 0, deadline: float | None = None,
                  fail_fast: bool = False, runtime: Runtime | None = None) -> list[str]:
        calls = list(calls)
        return self._call(self.aio.batch_run(function_id, calls, endpoint_id, policy,
                                             walltime, max_retries, endpoints=endpoints,
                                             gpus=gpus, memory=memory, deadline=deadline,
                                             fail_fast=fail_fast, runtime=runtime))

    def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        return self._call(self.aio.get_result(task_id, timeout))

    def get_batch_result(self, task_ids: Sequence[str], timeout: float | None = None,
                         return_exceptions: bool = False) -> list[Any]:
        return self._call(self.aio.get_batch_result(list(task_ids), timeout, return_exceptions))

    def cancel(self, task_ids: Sequence[str] | str) -> list[str]:
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        return self._call(self.aio.cancel(ids))

    def endpoints(self) -> list[EndpointInfo]:
        return self._call(self.aio.endpoints())

    def tasks(self, limit: int = 50, state: TaskState | None = None,
              endpoint: str | None = None) -> list[TaskInfo]:
        return self._call(self.aio.tasks(limit, state, endpoint))

    def share(self, kind: str, ref: str, users: Sequence[str], revoke: bool = False) -> list[str]:
        """Share an endpoint (id or name) or a function (id) you own with other users."""
        return self._call(self.aio.share(kind, ref, users, revoke))

    def status(self) -> HubStatus:
        return self._call(self.aio.status())

    def wait_for_endpoints(self, count: int, timeout: float = 30.0) -> list[EndpointInfo]:
        return self._call(self.aio.wait_for_endpoints(count, timeout))


async def _make_async(address: str, retry_timeout: float, policy: str, token: str | None,
                      tls_ca: str | None) -> AsyncClient:
    # Created on the loop thread so its asyncio objects bind to that loop.
    return AsyncClient(address, retry_timeout=retry_timeout, policy=policy, token=token,
                       tls_ca=tls_ca)
