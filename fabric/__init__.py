"""Fabric: register a Python function once, run it on any endpoint through one hub.

The client API lives in `fabric.client` (Client, AsyncClient, Executor);
errors in `fabric.errors`; per-function worker state in `fabric.worker.state`.
"""

import os as _os

# grpcio's newer I/O engine costs about 100 us more per message on loopback
# (measured: bidi ping-pong 250 -> 140 us, unary 510 -> 410 us); a Fabric round
# trip crosses four gRPC messages. This only takes effect if set before grpc is
# imported, so it lives here; a user's own GRPC_EXPERIMENTS wins.
_os.environ.setdefault(
    "GRPC_EXPERIMENTS",
    "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints")

# Our processes fork only to exec (workers, Parsl's block launch), and never
# use gRPC in a forked child. gRPC's fork handlers, run in such a child while
# its poller threads are busy, can abort it (seen: Parsl's launch shell dying
# with SIGABRT from an epoll_wait on a closed fd). So they stay off.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"

__all__ = ["__version__"]
