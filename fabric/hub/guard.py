"""The one place where every RPC is authenticated: a grpc.aio server interceptor.

For each call it reads `authorization: Bearer <token>` from the metadata,
verifies the token (cached), refuses revoked ones and checks that the kind
of token fits the service: endpoint tokens may only open EndpointService
streams, user and admin tokens only call ClientService. `Health` alone needs
no token. The handler then runs with the caller in `caller()`; what a caller
may do with a given task, function or endpoint is decided by `fabric.hub.access`.

Streams (an endpoint's link, a client's result watch) are tracked by token
id: when a token is revoked, its open streams are ended with UNAUTHENTICATED.

Refusals are logged to the `fabric.audit` logger with the peer and the
reason, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from fabric import errors
from fabric.hub.auth import NO_AUTH, Principal, VerifiedTokens
from fabric.wire import abort, to_status

audit = logging.getLogger("fabric.audit")

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("fabric_caller")

CLIENT_SERVICE = "fabric.v1.ClientService"
ENDPOINT_SERVICE = "fabric.v1.EndpointService"
PUBLIC_METHODS = frozenset({f"/{CLIENT_SERVICE}/Health"})


def caller() -> Principal:
    """Who is making the RPC being handled (set by the Guard)."""
    return _caller.get(NO_AUTH)


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def audit_refusal(peer: str, method: str, exc: errors.FabricError, p: Principal | None = None) -> None:
    who = f" user={p.user} kind={p.kind}" if p is not None else ""
    audit.warning("%s peer=%s method=%s%s reason=%s",
                  "denied" if isinstance(exc, errors.PermissionDenied) else "auth-failed",
                  peer, method.rsplit("/", 1)[-1], who, exc)


@contextlib.asynccontextmanager
async def answering(context: Any, method: str) -> AsyncIterator[None]:
    """Ends the call being handled with the status of a FabricError raised inside
    (refusals audited); for handlers, streaming ones included, that raise them."""
    try:
        yield
    except errors.FabricError as exc:
        if isinstance(exc, (errors.AuthError, errors.PermissionDenied)):
            audit_refusal(context.peer(), method, exc, caller())
        await abort(context, exc)


class Guard(grpc.aio.ServerInterceptor):
    """Authenticates every call; `tokens=None` runs without auth (--no-auth)."""

    def __init__(self, tokens: VerifiedTokens | None) -> None:
        self.tokens = tokens
        self.revoked: set[str] = set()
        self.refused = 0  # calls refused, for tests and status
        # Open streams per token id, so a revocation can end them.
        self._streams: dict[str, set[asyncio.Task[Any]]] = {}
        self._ended: set[asyncio.Task[Any]] = set()  # cancelled by us, not by gRPC

    # ------------------------------------------------------------ per call
    def authenticate(self, method: str, metadata: Any) -> Principal:
        if self.tokens is None:  # --no-auth
            return NO_AUTH
        token = bearer(metadata)
        if not token:
            raise errors.AuthError("this hub requires a token (authorization: Bearer ...): "
                                   "set FABRIC_TOKEN or create one with `fabric token create`")
        p = self.tokens.verify(token)
        if p.jti in self.revoked:
            raise errors.AuthError("token revoked")
        return p

    @staticmethod
    def check_kind(method: str, p: Principal) -> None:
        """Endpoint tokens for endpoint streams only; user and admin tokens for the rest."""
        service = method[1:].split("/", 1)[0]
        if service == ENDPOINT_SERVICE and p.kind != "endpoint":
            raise errors.PermissionDenied(
                "connecting an endpoint needs an endpoint token "
                "(fabric token create --kind endpoint --endpoint NAME)")
        if service != ENDPOINT_SERVICE and p.kind == "endpoint":
            raise errors.PermissionDenied("an endpoint token can only connect its endpoint")

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        if details.method in PUBLIC_METHODS:
            return handler if handler.request_streaming else _parse_here(handler)
        p = None
        try:
            p = self.authenticate(details.method, details.invocation_metadata)
            if p is not NO_AUTH:
                self.check_kind(details.method, p)
        except errors.FabricError as exc:
            self.refused += 1
            return _refusal(handler, details.method, exc, p)
        return self._bind(handler, p)

    # ------------------------------------------------------------ revocation
    def revoke(self, jtis: set[str]) -> int:
        """Refuse these tokens from now on and end their open streams; returns how many ended."""
        fresh = jtis - self.revoked
        self.revoked |= fresh
        ended = 0
        for jti in fresh:
            for task in self._streams.pop(jti, ()):
                self._ended.add(task)
                task.cancel()
                ended += 1
        if fresh:
            audit.warning("revoked %d tokens; ended %d open streams", len(fresh), ended)
        return ended

    def _bind(self, handler: Any, p: Principal) -> Any:
        """The same handler, run with `caller()` = p (streams also tracked for revocation)."""
        if not handler.request_streaming:
            # Requests arrive as bytes and are parsed here, so that a malformed frame is
            # an INVALID_ARGUMENT naming the message (gRPC itself would say INTERNAL).
            handler = _parse_here(handler)
        if not handler.request_streaming and not handler.response_streaming:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                _caller.set(p)
                return await inner(request, context)

            return handler._replace(unary_unary=unary)
        field = ("stream_stream" if handler.request_streaming else "unary_stream") \
            if handler.response_streaming else "stream_unary"
        inner = getattr(handler, field)
        if inspect.isasyncgenfunction(inner):
            async def streaming_gen(request: Any, context: Any) -> Any:
                async with self._as_stream_of(p, context):
                    async for item in inner(request, context):
                        yield item

            return handler._replace(**{field: streaming_gen})

        async def streaming(request: Any, context: Any) -> Any:
            async with self._as_stream_of(p, context):
                return await inner(request, context)

        return handler._replace(**{field: streaming})

    @contextlib.asynccontextmanager
    async def _as_stream_of(self, p: Principal, context: Any) -> AsyncIterator[None]:
        """Run a streaming handler as `p`, tracked so that revoking p's token ends it
        (with UNAUTHENTICATED, rather than as a plain cancellation)."""
        _caller.set(p)
        task = self._track(p)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._ended:
                raise
            await _abort_revoked(context)
        finally:
            self._untrack(p, task)

    def _track(self, p: Principal) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        self._streams.setdefault(p.jti, set()).add(task)
        return task

    def _untrack(self, p: Principal, task: asyncio.Task[Any]) -> None:
        self._ended.discard(task)
        streams = self._streams.get(p.jti)
        if streams is not None:
            streams.discard(task)
            if not streams:
                del self._streams[p.jti]


def _parse_here(handler: Any) -> Any:
    parse = handler.request_deserializer
    if parse is None:
        return handler
    field = "unary_stream" if handler.response_streaming else "unary_unary"
    inner = getattr(handler, field)
    what = getattr(getattr(parse, "__self__", None), "__name__", "request")

    async def invalid(context: Any, exc: Exception) -> None:
        code, details, trailers = to_status(errors.InvalidRequest(f"malformed {what}: {exc}"))
        context.set_trailing_metadata(trailers)
        await context.abort(code, details)

    if inspect.isasyncgenfunction(inner):
        async def parsed_gen(raw: bytes, context: Any) -> Any:
            try:
                request = parse(raw)
            except Exception as exc:  # noqa: BLE001 - DecodeError and kin
                await invalid(context, exc)
            async for item in inner(request, context):
                yield item

        behaviour: Any = parsed_gen
    else:
        async def parsed(raw: bytes, context: Any) -> Any:
            try:
                request = parse(raw)
            except Exception as exc:  # noqa: BLE001 - DecodeError and kin
                await invalid(context, exc)
            return await inner(request, context)

        behaviour = parsed
    return handler._replace(request_deserializer=None, **{field: behaviour})


async def _abort_revoked(context: Any) -> None:
    code, details, trailers = to_status(errors.AuthError("token revoked"))
    context.set_trailing_metadata(trailers)
    await context.abort(code, details)


def _refusal(handler: Any, method: str, exc: errors.FabricError, p: Principal | None) -> Any:
    """A handler of the same shape that logs the refusal and ends the call with its code."""
    code, details, trailers = to_status(exc)

    async def refuse(request: Any, context: Any) -> Any:
        audit_refusal(context.peer(), method, exc, p)
        context.set_trailing_metadata(trailers)
        await context.abort(code, details)

    # The request stays unparsed bytes: a refused caller's frames are never decoded.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, None, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, None, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, None, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(refuse, None, handler.response_serializer)


__all__ = ["Guard", "answering", "audit_refusal", "bearer", "caller"]
