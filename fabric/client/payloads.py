"""The client's big payloads: arguments too big for one message wait here until
they are uploaded as blobs, and result values that came as blobs are fetched.

A submission's arguments over `config.INLINE_PAYLOAD_MAX` are kept apart from
its protobuf message (protobuf copies a bytes field on every read, and these
may be hundreds of megabytes); just before the Submit that carries it, the
payload is uploaded and the message names the blob. A retried Submit reuses
the blob. See `fabric.blobs` for the transfer itself.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from fabric import blobs, errors
from fabric._proto import fabric_pb2 as pb
from fabric.worker.trace import ON as _TON, trace as _trace

UPLOADS_AT_ONCE = 4  # big arguments uploaded in parallel
#: Big arguments per Submit: the first tasks go (and run) while later ones upload.
UPLOAD_BATCH_BYTES = 64 * 1024 * 1024


class Payloads:
    def __init__(self, stub: Callable[[], Any], metadata: Any, retry_for: float) -> None:
        self._stub = stub  # the client's ClientService stub (opened lazily)
        self._metadata = metadata
        self._retry_for = retry_for
        self._waiting: dict[str, bytes] = {}  # task id -> arguments not uploaded yet

    def inline(self, task_id: str, payload: bytes) -> bytes:
        """What task `task_id`'s submission carries: its `payload`, or nothing when
        that is too big for a message (it then waits here to be uploaded)."""
        if not blobs.is_big(payload):
            return payload
        self._waiting[task_id] = payload
        return b""

    def waiting(self, task_id: str) -> int:
        """Bytes of `task_id`'s arguments waiting to be uploaded (0: none)."""
        payload = self._waiting.get(task_id)
        return 0 if payload is None else len(payload)

    async def upload_args(self, subs: Sequence[pb.TaskSubmission]) -> None:
        """Upload the kept arguments of these submissions; each then names its blob."""
        big = [s for s in subs if s.task_id in self._waiting and not s.args_blob]
        if not big:
            return
        slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def one(s: pb.TaskSubmission) -> None:
            async with slots:
                args = self._waiting[s.task_id]
                try:
                    s.args_blob = await blobs.upload(self._stub(), args, self._metadata,
                                                     retry_for=self._retry_for)
                except errors.PayloadTooLarge as exc:
                    raise errors.PayloadTooLarge(f"task {s.task_id}: arguments are "
                                                 f"{len(args)} bytes; {exc}") from None
                finally:
                    del self._waiting[s.task_id]  # uploaded, or failed for good

        await asyncio.gather(*map(one, big))

    async def with_value(self, r: pb.TaskResult) -> pb.TaskResult:
        """`r` with its value in place: a big one is fetched from the hub. A value that
        cannot be fetched (purged meanwhile) becomes the task's error."""
        if not r.value_blob:
            return r
        try:
            if _TON:
                _trace(r.task_id, 'c_fetch')
            r.value = await blobs.download(self._stub(), r.value_blob, self._metadata,
                                           retry_for=self._retry_for)
            if _TON:
                _trace(r.task_id, 'c_fetched')
        except errors.FabricError as exc:
            r.state = pb.FAILED
            r.error.CopyFrom(pb.TaskError(
                type_name="ResultUnavailable", kind="system",
                message=f"the task finished, but its result could not be fetched: {exc}"))
        r.ClearField("value_blob")
        return r


def fit(queued: list[Any], most: int, budget: int, waiting: Callable[[str], int]) -> int:
    """How many queued submissions from the front make one Submit (at least one): at
    most `most`, with inline arguments within `budget` bytes and big ones (`waiting`
    to be uploaded first) within UPLOAD_BATCH_BYTES."""
    n, inline, big = 0, 0, 0
    for sub, _, _ in queued[:most]:
        inline += len(sub.args)
        big += waiting(sub.task_id)
        if n and (inline > budget or big > UPLOAD_BATCH_BYTES):
            break
        n += 1
    return n


__all__ = ["Payloads", "fit"]
