"""Pieces of the endpoint side of the link protocol, shared by the real endpoint
(`fabric.endpoint.agent`) and the simulated one (`fabric.endpoint.simulated`),
so that both speak it the same way: reconnecting, answering the hub's timing
stamps, and packing results into outgoing messages.
"""

from __future__ import annotations

import asyncio
import random
from typing import Awaitable, Callable

import grpc

from fabric._proto import fabric_pb2 as pb

#: A hub that answers with these will not take the same endpoint next time either: its
#: token (UNAUTHENTICATED, PERMISSION_DENIED) or what it says of itself (INVALID_ARGUMENT:
#: a name or an allow-list the hub refuses) would be the same on every retry.
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.INVALID_ARGUMENT)


async def reconnect_forever(session: Callable[[], Awaitable[None]], *,
                            stopping: Callable[[], bool], backoff_s: tuple[float, float],
                            refused: Callable[[grpc.aio.AioRpcError], None],
                            failed: Callable[[BaseException], None],
                            down: Callable[[], None]) -> None:
    """Run link sessions until `stopping()`: after each one that ends, `down()`, then
    wait a jittered, doubling backoff (so a thousand endpoints do not return in
    step) and dial again. A permanent refusal (`refused`: the token, the name) ends
    it for good; other failures are reported (`failed`) and retried."""
    low, high = backoff_s
    backoff = low
    while not stopping():
        try:
            await session()
            backoff = low
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSED:
                refused(exc)
                return
            failed(exc)
        except Exception as exc:  # noqa: BLE001 - a broken link is retried, not fatal
            failed(exc)
        down()
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, high)


class Echoes:
    """Stamps from the hub to answer at once, so that it can time the link: the
    sent_at of its heartbeats (latency) and of its large task batches
    (bandwidth). Shared with the simulated endpoint."""

    __slots__ = ("heartbeat", "batch")

    def __init__(self) -> None:
        self.heartbeat = 0.0
        self.batch = 0.0

    def heard(self, msg: pb.HubMessage) -> bool:
        """Note the stamps `msg` carries; True when it carried one (answer now)."""
        stamped = False
        if msg.HasField("heartbeat") and msg.heartbeat.sent_at:
            self.heartbeat, stamped = msg.heartbeat.sent_at, True
        if msg.sent_at:
            self.batch, stamped = msg.sent_at, True
        return stamped

    def answer_batch(self, out: pb.EndpointMessage) -> None:
        if self.batch:
            out.batch_echo, self.batch = self.batch, 0.0

    def take_heartbeat(self) -> float:
        """The heartbeat stamp to echo in the heartbeat being sent (0.0: none)."""
        echo, self.heartbeat = self.heartbeat, 0.0
        return echo


def pack_outgoing(msg: pb.EndpointMessage, to_send: list[pb.TaskResult], n: int,
                  draining: bool, returned: list[str]) -> bool:
    """Move the first `n` results (and, while draining, the handed-back task ids)
    into `msg`; True when results are left for another message. Shared with the
    simulated endpoint, so both speak the protocol the same way."""
    if to_send:
        msg.results.extend(to_send[:n])
        del to_send[:n]
    if draining:
        msg.draining = True
        if returned:
            msg.returned.extend(returned)
            returned.clear()
    return bool(to_send)


def fit(results: list[pb.TaskResult], budget: int) -> int:
    """How many results from the front fit in `budget` bytes (at least one)."""
    n, size = 0, 0
    for r in results:
        size += len(r.value)
        if n and size > budget:
            break
        n += 1
    return n


__all__ = ["Echoes", "fit", "pack_outgoing", "reconnect_forever"]
