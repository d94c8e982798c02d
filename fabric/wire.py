"""The one place where Fabric errors meet gRPC status codes.

The hub raises `FabricError`s; `to_status()` says how each is sent (status
code + the ErrorKind name in trailing metadata). The client turns any
`grpc.RpcError` back into the matching `FabricError` with `from_rpc_error()`,
so a user never sees a raw gRPC error.
"""

from __future__ import annotations

import grpc

from fabric import errors

ERROR_KEY = "fabric-error"

_STATUS: dict[str, grpc.StatusCode] = {
    "INVALID_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "PAYLOAD_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "VERSION_MISMATCH": grpc.StatusCode.FAILED_PRECONDITION,
    "FUNCTION_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ENDPOINT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "TASK_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "BLOB_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "STORAGE_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "ENDPOINT_OFFLINE": grpc.StatusCode.UNAVAILABLE,
    "NO_ELIGIBLE_ENDPOINT": grpc.StatusCode.FAILED_PRECONDITION,
    "AUTH_FAILED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "HUB_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "QUEUE_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}

# Codes that gRPC itself produces, for calls that never reached our handlers.
_FROM_TRANSPORT: dict[grpc.StatusCode, type[errors.FabricError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.HubUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.HubUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.PayloadTooLarge,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
}


def error_kind(exc: errors.FabricError) -> str:
    """The kind name sent for `exc` (in the trailer, or in band on a stream)."""
    return exc.kind if exc.kind in _STATUS else "INTERNAL"


def from_kind(kind: str, message: str) -> errors.FabricError:
    """The FabricError for a kind sent in band."""
    return errors.BY_KIND.get(kind, errors.FabricError)(message)


def to_status(exc: errors.FabricError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    kind = error_kind(exc)
    return _STATUS[kind], str(exc), ((ERROR_KEY, kind),)


async def abort(context: grpc.aio.ServicerContext, exc: errors.FabricError) -> None:
    """End the call being handled with `exc`'s status (raises, as context.abort does)."""
    code, details, trailers = to_status(exc)
    context.set_trailing_metadata(trailers)
    await context.abort(code, details)


def is_transient(exc: grpc.RpcError) -> bool:
    """True for failures where retrying the same call later may succeed."""
    code = exc.code() if hasattr(exc, "code") else None
    kind = _kind(exc)
    return kind is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def is_backpressure(exc: grpc.RpcError) -> bool:
    """The hub asks us to slow down (the user's queue is full): wait, then retry."""
    return _kind(exc) == "QUEUE_FULL"


def is_storage_full(exc: grpc.RpcError) -> bool:
    """The hub's disk has no room now: worth retrying for a while (space may be
    freed), then StorageFull for the caller to decide."""
    return _kind(exc) == errors.StorageFull.kind


def _kind(exc: grpc.RpcError) -> str | None:
    try:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == ERROR_KEY:
                return value
    except Exception:
        pass
    return None


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> errors.FabricError:
    """The FabricError a user sees for a failed call."""
    kind = _kind(exc)
    details = exc.details() if hasattr(exc, "details") else str(exc)  # type: ignore[attr-defined]
    if kind is not None:
        return from_kind(kind, details)
    code = exc.code() if hasattr(exc, "code") else None  # type: ignore[attr-defined]
    cls = _FROM_TRANSPORT.get(code, errors.FabricError)  # type: ignore[arg-type]
    where = f" ({target})" if target else ""
    name = code.name if code is not None else "UNKNOWN"
    return cls(f"{name}{where}: {details}")
