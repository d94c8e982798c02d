"""Every exception a Fabric user can catch.

    FabricError
    ├── HubUnavailable          the hub cannot be reached (after retries)
    ├── AuthError               missing, bad or expired credentials
    ├── PermissionDenied        authenticated, but not allowed
    ├── InvalidRequest          the request itself is malformed
    │   ├── PayloadTooLarge     a function body, argument or result over the limit
    │   ├── InvalidName         a name (an endpoint's) that cannot be an id and a folder
    │   ├── InvalidRuntime      a runtime spec that cannot be built: bad requirement, version, env
    │   └── VersionMismatch     function pickled on another Python minor version
    ├── NotFound
    │   ├── FunctionNotFound
    │   ├── EndpointNotFound
    │   ├── TaskNotFound
    │   └── ResultPurged        the task finished, but its result was dropped after retention
    ├── StorageFull             the hub's disk has no room for this write yet (clients retry)
    ├── EndpointOffline         the named endpoint is not connected
    ├── EndpointBusy            an endpoint with this name already runs here
    ├── EngineUnavailable       the endpoint's engine (Parsl, Dask) is not installed or misconfigured
    ├── BadConfig               an endpoint configuration file cannot be read or has wrong values
    ├── NoEligibleEndpoint      no online endpoint can take the task
    ├── QueueFull               the user's cap on unfinished tasks (the client waits and retries)
    ├── TaskPending             asked for a result that is not ready (non-blocking get)
    ├── TaskTimeout             waited for a result longer than `timeout` (also a TimeoutError)
    ├── TaskCancelled           the task was cancelled before it finished
    └── TaskFailed              the function raised; carries the remote traceback
        ├── WorkerDied          the worker process died while running the task (retries used up)
        ├── RuntimeBuildFailed  the task's runtime could not be built there (pip's own message)
        └── WalltimeExceeded    the task ran longer than its walltime and was killed

The hub raises these too; `fabric.wire` maps each to one gRPC status code and
back, so a user never sees a raw gRPC error.
"""

from __future__ import annotations

from typing import Any


class FabricError(Exception):
    """Base of every Fabric error."""

    #: ErrorKind name on the wire (see protos/fabric.proto); set on subclasses.
    kind: str = "INTERNAL"


class HubUnavailable(FabricError):
    kind = "HUB_UNAVAILABLE"


class AuthError(FabricError):
    kind = "AUTH_FAILED"


class PermissionDenied(FabricError):
    kind = "PERMISSION_DENIED"


class InvalidRequest(FabricError):
    kind = "INVALID_REQUEST"


class PayloadTooLarge(InvalidRequest):
    kind = "PAYLOAD_TOO_LARGE"


class InvalidName(InvalidRequest):
    """An endpoint name that is not 1-64 of [A-Za-z0-9._-] starting with a letter or
    digit: it would not be a safe folder name under $FABRIC_HOME/endpoints."""

    kind = "INVALID_REQUEST"


class InvalidRuntime(InvalidRequest):
    """A `Runtime` spec that is not one: an unparseable requirement, a Python version
    that is not "3.X", a bad environment variable; the message names the part."""

    kind = "INVALID_REQUEST"


class VersionMismatch(InvalidRequest):
    kind = "VERSION_MISMATCH"


class NotFound(FabricError):
    kind = "INVALID_REQUEST"


class FunctionNotFound(NotFound):
    kind = "FUNCTION_NOT_FOUND"


class EndpointNotFound(NotFound):
    kind = "ENDPOINT_NOT_FOUND"


class TaskNotFound(NotFound):
    kind = "TASK_NOT_FOUND"


class BlobNotFound(NotFound):
    """No such payload at the hub (never uploaded, expired unused, or purged with its task)."""

    kind = "BLOB_NOT_FOUND"


class StorageFull(FabricError):
    """The hub has no disk left for this payload; retry once it has room."""

    kind = "STORAGE_FULL"


class PayloadCorrupt(FabricError):
    """A payload fetched from the hub does not match the digest taken at upload."""


class ResultPurged(NotFound):
    """The task finished long ago; its result was dropped after the hub's retention period."""


class EndpointOffline(FabricError):
    kind = "ENDPOINT_OFFLINE"


class EndpointBusy(FabricError):
    """Another endpoint process already runs under this name on this machine."""


class EngineUnavailable(FabricError):
    """The engine an endpoint was configured with cannot run here: its extra is
    not installed (the message names the `pip install` to run) or its settings are wrong."""


class BadConfig(FabricError):
    """An endpoint configuration file (`fabric endpoint configure`) cannot be read,
    or holds an unknown key or a value of the wrong type; the message names the file."""


class NoEligibleEndpoint(FabricError):
    kind = "NO_ELIGIBLE_ENDPOINT"


class QueueFull(FabricError):
    """Too many unfinished tasks of this user at the hub; `Client` waits and retries."""

    kind = "QUEUE_FULL"


class TaskPending(FabricError):
    """The result is not ready yet; pass `timeout=` to wait for it."""


class TaskTimeout(FabricError, TimeoutError):
    """Waited `timeout` seconds and the result did not arrive."""


class TaskCancelled(FabricError):
    """The task was cancelled before it produced a result."""


class TaskFailed(FabricError):
    """The remote function raised.

    `cause` is the original exception when it could be unpickled here (it is
    also chained as `__cause__`); otherwise None, and `type_name`/`message`
    carry its text. `remote_traceback` is the traceback from the worker.
    """

    def __init__(
        self,
        task_id: str,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(f"task {task_id} failed: {type_name}: {message}")
        self.task_id = task_id
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.task_id, self.type_name, self.message, self.remote_traceback, None),
        )


class WorkerDied(TaskFailed):
    """The worker process running the task died (exit code or signal in `message`)."""


class WalltimeExceeded(TaskFailed):
    """The task ran past its `walltime` and was killed."""


class RuntimeBuildFailed(TaskFailed):
    """The endpoint could not provide the task's runtime: pip failed (its own
    message is in `message`), no interpreter of the asked Python version was
    found there (`type_name` "VersionMismatch"), or the spec asks for something
    the endpoint refuses (a setup line). Only tasks needing that runtime fail."""


#: Wire ErrorKind name -> the exception raised for it on the client.
BY_KIND: dict[str, type[FabricError]] = {
    cls.kind: cls
    for cls in (
        InvalidRequest,
        PayloadTooLarge,
        VersionMismatch,
        FunctionNotFound,
        EndpointNotFound,
        TaskNotFound,
        BlobNotFound,
        StorageFull,
        EndpointOffline,
        NoEligibleEndpoint,
        QueueFull,
        AuthError,
        PermissionDenied,
        HubUnavailable,
    )
}
BY_KIND["INTERNAL"] = FabricError

__all__ = [
    "FabricError",
    "HubUnavailable",
    "AuthError",
    "PermissionDenied",
    "InvalidRequest",
    "PayloadTooLarge",
    "InvalidName",
    "InvalidRuntime",
    "BlobNotFound",
    "StorageFull",
    "PayloadCorrupt",
    "VersionMismatch",
    "NotFound",
    "FunctionNotFound",
    "EndpointNotFound",
    "TaskNotFound",
    "ResultPurged",
    "EndpointOffline",
    "EndpointBusy",
    "EngineUnavailable",
    "BadConfig",
    "NoEligibleEndpoint",
    "QueueFull",
    "TaskPending",
    "TaskTimeout",
    "TaskCancelled",
    "TaskFailed",
    "WorkerDied",
    "WalltimeExceeded",
    "RuntimeBuildFailed",
]
