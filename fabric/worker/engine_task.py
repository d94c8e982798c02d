"""The task function that Parsl and Dask workers run: one Fabric task, warm.

The Parsl and Dask engines (fabric/endpoint/engines/) submit
`run_engine_task` to their workers with the task's opaque bytes. It is a
module-level function, so both engines ship it by reference; inside the
worker process it runs `fabric.worker.runtime.run_task` against one
process-global function cache, so warm functions, the cold flag and
`fabric.worker.state()` behave exactly as on the local pool's workers. It
returns the same plain result row the local workers send back.

The function body travels with every task (engines have no side channel for
it); `FunctionCache.add` ignores a body it has already loaded, so only the
first call in a worker process unpickles it.
"""

from __future__ import annotations

from typing import Any

from fabric.worker import runtime

#: One per worker process, for its whole life: the warm cache.
_cache = runtime.FunctionCache()


def run_engine_task(task_id: str, function_id: str, body: bytes, args: bytes,
                    max_result_bytes: int) -> tuple[Any, ...]:
    """Run one task in this worker process; returns a result row (never raises)."""
    if body:
        _cache.add(function_id, body)
    r = runtime.run_task(task_id, function_id, args, cache=_cache,
                         max_result_bytes=max_result_bytes)
    return runtime.result_row(r)
