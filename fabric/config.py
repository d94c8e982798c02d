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

#: Largest function body, argument or result payload accepted (bytes).
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024
#: gRPC message limit: a payload plus envelope must fit in one message.
GRPC_MESSAGE_LIMIT = DEFAULT_MAX_PAYLOAD + 16 * 1024 * 1024

#: Unfinished tasks one user may have at the hub; beyond it, submissions wait
#: (the client retries with backoff) until some finish.
DEFAULT_MAX_QUEUED_PER_USER = 1_000_000

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
