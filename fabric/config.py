"""Defaults and limits shared by the hub, endpoints and clients.

Every number that a user may want to change lives here, once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: "3.11": functions are pickled per minor version; endpoints must match it.
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

DEFAULT_PORT = 50051
DEFAULT_HUB_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

#: Largest argument or result payload accepted (bytes). Anything bigger than
#: INLINE_PAYLOAD_MAX travels as a blob, in chunks, so this is bounded by the
#: hub's disk, not by gRPC.
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024
#: Payloads up to this size ride inside task and result messages; bigger ones
#: are uploaded as blobs first (one extra round trip, then streamed in chunks).
INLINE_PAYLOAD_MAX = 1024 * 1024
#: Blobs move in chunks of this size (one gRPC message each).
BLOB_CHUNK_BYTES = 1024 * 1024
#: A function body must fit in one message (it is sent to every endpoint that
#: runs it); big data belongs in the arguments.
MAX_FUNCTION_BODY = 32 * 1024 * 1024
#: gRPC message limit. Every batch (tasks, results, submissions) is capped at
#: MAX_BATCH_BYTES of payload plus one inline payload, well below it.
GRPC_MESSAGE_LIMIT = 64 * 1024 * 1024
#: Blobs no task or result refers to are deleted after this long (an upload
#: whose submission never came, a result that lost the race to another copy).
DEFAULT_ORPHAN_BLOB_TTL_S = 3600.0

#: Unfinished tasks one user may have at the hub; beyond it, submissions wait
#: (the client retries with backoff) until some finish.
DEFAULT_MAX_QUEUED_PER_USER = 1_000_000
#: Bytes of uploaded arguments one user may keep at the hub (blobs of tasks not
#: finished yet, and uploads not used yet); beyond it, uploads wait likewise.
#: Results do not count: `--retention` governs them.
DEFAULT_MAX_STORED_PER_USER = 64 * 1024**3

#: Task ids one client call may name (Subscribe, GetResults, Cancel, Submit, Watch);
#: the client pages longer lists, so any number it submitted can be waited for.
MAX_IDS_PER_CALL = 100_000

#: Bytes of each task's output (stdout and stderr) a worker keeps: the last ones.
#: Output beyond it is dropped, never passed to the endpoint's log.
DEFAULT_OUTPUT_TAIL_BYTES = 64 * 1024

#: Tasks per message on the endpoint link; bytes per message are capped too.
MAX_TASKS_PER_BATCH = 1024
MAX_BATCH_BYTES = 8 * 1024 * 1024

#: WAN-friendly: a lost endpoint is noticed within about 10 s.
DEFAULT_HEARTBEAT_PERIOD_S = 5.0
#: A link silent for this many periods is declared lost and its tasks requeued.
DEFAULT_HEARTBEAT_MISSES = 2

#: Results a client has received are kept this long, then purged (status stays "purged").
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
#: Results nobody collected are purged this long after they finished.
DEFAULT_MAX_AGE_S = 30 * 24 * 3600.0
#: "purged" tombstones are deleted this long after purging (then: unknown task id).
DEFAULT_FORGET_AFTER_S = 90 * 24 * 3600.0

#: A connection that has not finished its HTTP/2 (and TLS) handshake this long after
#: it was accepted is closed: sockets that never speak must not hold the hub's
#: file descriptors (500 of them once kept new clients out).
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
#: A connection with no call in flight for this long is closed (GOAWAY); a client
#: that was only quiet reconnects on its next call without noticing. Endpoint links
#: are long-lived calls, so they are never idle.
DEFAULT_IDLE_CONNECTION_S = 300.0

#: Reruns of a task whose worker died (segfault, OOM kill, os._exit) before it fails.
DEFAULT_MAX_RETRIES = 1


def home() -> Path:
    """Fabric's state directory: $FABRIC_HOME, else ~/.fabric."""
    return Path(os.environ.get("FABRIC_HOME", Path.home() / ".fabric"))


def grpc_options(max_message: int = GRPC_MESSAGE_LIMIT) -> list[tuple[str, int]]:
    """Channel/server options every Fabric process uses."""
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        # Long-lived streams: detect dead peers even when idle.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
