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
DEFAULT_MAX_PAYLOAD = 128 * 1024 * 1024
#: gRPC message limit: a payload plus envelope must fit in one message.
GRPC_MESSAGE_LIMIT = DEFAULT_MAX_PAYLOAD + 16 * 1024 * 1024

#: Tasks per message on the endpoint link; bytes per message are capped too.
MAX_TASKS_PER_BATCH = 1024
MAX_BATCH_BYTES = 8 * 1024 * 1024

DEFAULT_HEARTBEAT_PERIOD_S = 5.0
#: A link silent for this many periods is declared lost.
DEFAULT_HEARTBEAT_MISSES = 3


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
