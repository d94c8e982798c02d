"""Which endpoints may run a task at all, and why none can.

Constraint filtering runs before any policy, so a policy only ever chooses
among endpoints that are online and meet the task's needs: the same Python
minor version, enough GPUs and memory, and the user's allow-list. When
nothing qualifies, `why_held` says which need ruled everything out, in words
a user reads in `fabric tasks`.
"""

from __future__ import annotations

from typing import Callable, Sequence

from scheduler.views import EndpointView, TaskView


def meets(task: TaskView, v: EndpointView) -> bool:
    """The endpoint's capabilities satisfy the task's needs (online or not)."""
    return ((not task.python_version or v.python_version == task.python_version)
            and v.gpus >= task.gpus
            and (not task.memory_bytes or v.memory_bytes >= task.memory_bytes)
            and (task.allowed_endpoints is None or v.endpoint_id in task.allowed_endpoints))


def eligible(task: TaskView, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
    """Endpoints that may run the task now: online and meeting its needs."""
    return [v for v in endpoints if v.online and meets(task, v)]


def why_held(task: TaskView, endpoints: Sequence[EndpointView]) -> str:
    """The first need that rules out every online endpoint, for a held task,
    e.g. "needs a GPU; no online endpoint has one (3 online)"."""
    online = [v for v in endpoints if v.online]
    if not online:
        return "waiting for an endpoint to come online"
    remaining, qualifiers = online, []
    if task.allowed_endpoints is not None:
        remaining = [v for v in online if v.endpoint_id in task.allowed_endpoints]
        if not remaining:
            names = sorted(task.allowed_endpoints)
            more = f" (+{len(names) - 5})" if len(names) > 5 else ""
            return (f"may run only on {', '.join(names[:5])}{more}; none of them is online "
                    f"({len(online)} online)")
        if len(remaining) < len(online):
            qualifiers.append("allowed")
    # (need, is it met by v, what an endpoint lacks, how to name those that meet it)
    needs: list[tuple[str, Callable[[EndpointView], bool], str, str]] = []
    if task.python_version:
        needs.append((f"needs Python {task.python_version}",
                      lambda v: v.python_version == task.python_version,
                      "has it", f"with Python {task.python_version}"))
    if task.gpus:
        gpus = "a GPU" if task.gpus == 1 else f"{task.gpus} GPUs"
        needs.append((f"needs {gpus}", lambda v: v.gpus >= task.gpus,
                      "has one" if task.gpus == 1 else "has that many", f"with {gpus}"))
    if task.memory_bytes:
        needs.append((f"needs {format_bytes(task.memory_bytes)} of memory",
                      lambda v: v.memory_bytes >= task.memory_bytes, "has that much", ""))
    for need, ok, lack, qualifier in needs:
        kept = [v for v in remaining if ok(v)]
        if not kept:
            if not any(ok(v) for v in online):
                qualifiers = []  # no online endpoint at all meets it: say just that
            before = [q for q in qualifiers if not q.startswith("with ")]
            after = " and ".join(q for q in qualifiers if q.startswith("with "))
            where = " ".join(["online", *before, "endpoint", after]).rstrip()
            return f"{need}; no {where} {lack} ({len(online)} online)"
        if len(kept) < len(remaining) and qualifier:  # name only needs that narrowed the field
            qualifiers.append(qualifier)
        remaining = kept
    return f"no online endpoint meets the task's needs ({len(online)} online)"  # not reached


def named_problem(task: TaskView, v: EndpointView) -> str | None:
    """Why the endpoint the user named can never run the task, or None.

    Only capabilities count: an offline named endpoint is worth waiting for.
    An endpoint that has not reported capabilities yet gets the benefit of the doubt.
    """
    if task.allowed_endpoints is not None and v.endpoint_id not in task.allowed_endpoints:
        return f"named endpoint {v.name!r} is not in the task's allowed endpoints"
    if not v.python_version:
        return None
    if task.python_version and v.python_version != task.python_version:
        return (f"named endpoint {v.name!r} runs Python {v.python_version}, "
                f"the task needs {task.python_version}")
    if v.gpus < task.gpus:
        return f"named endpoint {v.name!r} has {v.gpus} GPUs, the task needs {task.gpus}"
    if task.memory_bytes and v.memory_bytes < task.memory_bytes:
        return (f"named endpoint {v.name!r} has {format_bytes(v.memory_bytes)} of memory, "
                f"the task needs {format_bytes(task.memory_bytes)}")
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n} B"  # not reached
