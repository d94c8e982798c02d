"""The hub process: one grpc.aio server, the task store and the dispatcher.

Lifecycle: `await hub.start()` (opens the store, reloads unfinished tasks,
binds the port), `await hub.wait_closed()`, `await hub.shutdown()`
(idempotent: stops accepting, ends streams, commits and closes the store).
`async with Hub(config) as hub:` does start and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import shutil
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil

from fabric import __version__, config
from fabric.jobs import Jobs
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.hub.access import Access
from fabric.hub.auth import SigningKey, VerifiedTokens, key_path
from fabric.hub.blobs import Blobs, blob_dir
from fabric.hub.client_api import ClientApi
from fabric.hub.disk import DiskBudget
from fabric.hub.dispatch import Dispatcher, EndpointRecord, LiveTask, Needs
from fabric.hub.endpoint_api import EndpointApi
from fabric.hub.guard import Guard
from fabric.hub.location import store_path
from fabric.hub.runtimes import stored_python
from fabric.hub.sessions import Sessions
from fabric.hub.store import TaskStore
from fabric.hub.tokens import TokenBook
from fabric.models import Capabilities

log = logging.getLogger("fabric.hub")

#: How often the hub looks for newly revoked tokens (seconds).
REVOCATION_POLL_S = 1.0
#: Finished tasks' argument blobs are deleted this soon after (batched).
SWEEP_AFTER_S = 1.0
#: How often the hub counts its open file descriptors, and the share of the limit
#: at which it warns.
FD_CHECK_S = 1.0
FD_WARN_AT = 0.9


@dataclass
class HubConfig:
    host: str = "127.0.0.1"
    port: int = config.DEFAULT_PORT  # 0 = pick a free port
    store_path: str = field(default_factory=lambda: str(config.home() / "hub.db"))
    max_payload: int = config.DEFAULT_MAX_PAYLOAD
    heartbeat_period: float = config.DEFAULT_HEARTBEAT_PERIOD_S
    heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES
    retention_s: float = config.DEFAULT_RETENTION_S  # results kept after a client got them
    max_age_s: float = config.DEFAULT_MAX_AGE_S  # results nobody collected
    forget_after_s: float = config.DEFAULT_FORGET_AFTER_S  # "purged" tombstones
    max_queued_per_user: int = config.DEFAULT_MAX_QUEUED_PER_USER
    max_stored_per_user: int = config.DEFAULT_MAX_STORED_PER_USER  # argument bytes; 0 = no cap
    orphan_blob_ttl_s: float = config.DEFAULT_ORPHAN_BLOB_TTL_S  # uploads no task used
    auth: bool = True  # False: --no-auth, every caller is the one local user
    tls_cert: str = ""  # PEM files; both set: TLS on the port
    tls_key: str = ""
    handshake_timeout_s: float = config.DEFAULT_HANDSHAKE_TIMEOUT_S
    idle_connection_s: float = config.DEFAULT_IDLE_CONNECTION_S

    @property
    def silent_after(self) -> float:
        """A link quiet for this long is declared lost."""
        return self.heartbeat_period * self.heartbeat_misses


class Hub:
    def __init__(self, cfg: HubConfig | None = None) -> None:
        self.config = cfg or HubConfig()
        self.config.store_path = store_path(self.config.store_path)  # BadConfig saying why
        self.store = TaskStore(self.config.store_path)
        self.sessions = Sessions(on_delivered=lambda ids: self.store.mark_collected(ids, time.time()))
        blobs = blob_dir(self.config.store_path)
        # One budget for every write path: the store and its blobs share a disk.
        self.budget = DiskBudget(blobs, self.store)
        self.dispatcher = Dispatcher(self.store, self.sessions, self.budget)
        self.access = Access(self.dispatcher.endpoints, self.dispatcher.functions)
        self.dispatcher.usable = self.access.usable
        self.blobs = Blobs(self.store, blobs, self.config.max_payload,
                           self.config.max_stored_per_user, self.budget)
        self.dispatcher.blobs_released = self._sweep_soon
        self._sweep_due: asyncio.TimerHandle | None = None
        self.guard: Guard | None = None
        self._tokens: TokenBook | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._endpoint_api: EndpointApi | None = None
        self._jobs = Jobs("hub")  # every background loop: stopped and awaited at shutdown
        self._stopped = asyncio.Event()
        self._shutdown_started = False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> "Hub":
        cfg = self.config
        await self.store.open()
        await self.blobs.open()
        self.budget.refresh()
        self.store.wal_limit = self.budget.limits.wal_limit  # (sized to the disk, at start)
        await self._reload()
        self.access.load(await self.store.shares())
        if cfg.auth:
            key = await asyncio.to_thread(SigningKey.load_or_create, key_path(cfg.store_path))
            self.guard = Guard(VerifiedTokens(key))
            self.guard.revoke((await asyncio.to_thread(self._revoked_since, 0.0))[0])
        else:
            self.guard = Guard(None)
        interceptors = [self.guard]
        self._server = grpc.aio.server(interceptors=interceptors, options=[
            *config.grpc_options(),
            # Endpoints ping idle streams; allow it rather than sending GOAWAY.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
            # Connections that never speak, or stay without a call, are closed.
            ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", int(cfg.idle_connection_s * 1000)),
        ])
        pb_grpc.add_ClientServiceServicer_to_server(
            ClientApi(self.dispatcher, self.store, self.sessions, self.access, self.blobs,
                      cfg.max_payload, __version__, cfg.max_queued_per_user),
            self._server,
        )
        self._endpoint_api = EndpointApi(self.dispatcher, self.store, self.access, self.blobs,
                                         cfg.heartbeat_period)
        pb_grpc.add_EndpointServiceServicer_to_server(self._endpoint_api, self._server)
        if cfg.tls_cert or cfg.tls_key:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(),
                                                  Path(cfg.tls_cert).read_bytes())])
            self.port = self._server.add_secure_port(f"{cfg.host}:{cfg.port}", creds)
        else:
            self.port = self._server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if not self.port:
            raise OSError(f"could not bind {cfg.host}:{cfg.port}")
        await self._server.start()
        jobs = self._jobs
        jobs.start(self._watch_links(), "watch links")
        jobs.start(self._reconcile_after_restart(), "reconcile after restart")
        jobs.start(self._purge_forever(), "purge")
        jobs.start(self._watch_descriptors(), "watch descriptors")
        if cfg.auth:
            jobs.start(self._watch_revocations(), "watch revocations")
        log.info("hub listening on %s (store %s); closing connections that do not finish "
                 "their handshake within %gs or carry no call for %gs", self.address,
                 cfg.store_path, cfg.handshake_timeout_s, cfg.idle_connection_s)
        return self

    async def _reload(self) -> None:
        """After a restart: known endpoints, functions used by unfinished tasks, the tasks."""
        d = self.dispatcher
        for row in await self.store.endpoints():
            caps = Capabilities.from_dict(row.capabilities) if row.capabilities else None
            d.endpoints[row.endpoint_id] = EndpointRecord(row.endpoint_id, row.name, row.owner,
                                                          caps, row.last_seen)
        rows = await self.store.unfinished_tasks()
        d.settling = bool(rows)
        live = []
        for r in rows:
            fn = d.functions.get(r.function_id) or await self.store.get_function(r.function_id)
            if fn is None:
                continue
            d.functions[fn.function_id] = fn
            needs = Needs.from_dict(r.needs)
            t = LiveTask(r.task_id, r.function_id, r.args or b"", r.requested_endpoint,
                         stored_python(needs.runtime, fn.python_version), "", r.walltime_s,
                         r.max_retries, needs, r.owner or "local", r.args_blob,
                         r.args_size)
            # Routed tasks (dispatched ones included) wait for the endpoint they were
            # routed to: if it still holds one, it says so in its Hello and the task is
            # not sent twice.
            t.endpoint_id, t.reason = r.endpoint_id, r.route_reason
            t.submitted_at = r.submitted_at
            live.append(t)
        routed = [t for t in live if t.endpoint_id]
        d.enqueue(routed)
        d.enqueue(d.route([t for t in live if not t.endpoint_id]))
        if live:
            log.info("reloaded %d unfinished tasks", len(live))

    async def _reconcile_after_restart(self) -> None:
        """Reloaded tasks wait for the endpoint they were routed to, which may still
        hold them; one that has not reconnected within the heartbeat threshold is
        treated as lost and its unpinned tasks are routed elsewhere."""
        await asyncio.sleep(self.config.silent_after)
        self.dispatcher.settling = False
        moved = self.dispatcher.reroute_offline()
        if moved:
            log.info("%d reloaded tasks re-routed: their endpoints did not come back", moved)

    def _revoked_since(self, since: float) -> tuple[set[str], float]:
        # Runs on a worker thread, one call at a time.
        if self._tokens is None:
            self._tokens = TokenBook(self.config.store_path)
        return self._tokens.revoked_since(since)

    async def _watch_revocations(self) -> None:
        """`fabric token revoke` writes to the store; pick it up and end those streams."""
        since = 0.0
        while True:
            await asyncio.sleep(REVOCATION_POLL_S)
            try:
                revoked, since = await asyncio.to_thread(self._revoked_since, since)
            except Exception:  # noqa: BLE001 - try again next round; the hub stays up
                log.exception("reading revoked tokens failed")
                continue
            assert self.guard is not None
            self.guard.revoke(revoked)

    async def _purge_forever(self) -> None:
        cfg = self.config
        every = min(max(min(cfg.retention_s, cfg.max_age_s, cfg.orphan_blob_ttl_s) / 4, 0.2),
                    300.0)
        while True:
            await asyncio.sleep(every)
            now = time.time()
            try:
                purged, forgotten = await self.store.purge(
                    now - cfg.retention_s, now - cfg.max_age_s, now - cfg.forget_after_s)
                swept = await self.blobs.sweep(cfg.orphan_blob_ttl_s)
            except Exception:  # noqa: BLE001 - try again next round; the hub stays up
                log.exception("purging old results failed")
                continue
            self.dispatcher.counters["purged"] += purged
            self.dispatcher.counters["blobs_deleted"] += swept
            if purged or forgotten:
                log.info("retention: %d results purged, %d tombstones forgotten",
                         purged, forgotten)

    def _sweep_soon(self) -> None:
        """Finished tasks let go of argument blobs: delete them within a second (a
        heavy user's payloads must not wait for the purge loop's next round)."""
        if self._sweep_due is None and not self._shutdown_started:
            self._sweep_due = asyncio.get_running_loop().call_later(SWEEP_AFTER_S, self._sweep)

    def _sweep(self) -> None:
        self._sweep_due = None

        async def sweep() -> None:
            try:
                self.dispatcher.counters["blobs_deleted"] += await self.blobs.sweep(
                    self.config.orphan_blob_ttl_s)
            except Exception:  # noqa: BLE001 - the purge loop tries again; the hub stays up
                log.exception("deleting released blobs failed")

        if not self._shutdown_started:
            self._jobs.start(sweep(), "sweep blobs")

    async def _watch_links(self) -> None:
        period = self.config.heartbeat_period
        silent_after = self.config.silent_after
        while True:
            # Checking four times per period keeps detection within
            # silent_after + period/4 of the last message heard.
            await asyncio.sleep(period / 4)
            for link in self.dispatcher.expire_links(silent_after):
                log.warning("endpoint %s silent for %.1fs: dropping its link",
                            link.endpoint.name, silent_after)
                assert self._endpoint_api is not None
                self._endpoint_api.drop(link)

    async def _watch_descriptors(self) -> None:
        """Say so in the log when connections near the file-descriptor limit: past it,
        new clients and endpoints wait to be accepted (gRPC retries the accept)."""
        me = psutil.Process()
        crowded = False
        while True:
            await asyncio.sleep(FD_CHECK_S)
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            try:
                used = me.num_fds()
            except OSError:  # counting takes a descriptor too: there is none left
                used = limit
            if not crowded and used >= FD_WARN_AT * limit:
                log.warning("%d of %d file descriptors in use: new connections may wait; "
                            "idle and silent ones are closed after %gs / %gs", used, limit,
                            self.config.idle_connection_s, self.config.handshake_timeout_s)
                crowded = True
            elif crowded and used < FD_WARN_AT * limit * 0.8:
                log.info("%d of %d file descriptors in use again", used, limit)
                crowded = False

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def shutdown(self, grace: float = 1.0) -> None:
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        if self._sweep_due is not None:
            self._sweep_due.cancel()
        await self._jobs.stop()  # before the store closes: none of them may touch it after
        for session in list(self.sessions._sessions.values()):
            self.sessions.close(session)
        if self._server is not None:
            await self._server.stop(grace)
        unstored = self.dispatcher.finisher.close()
        if unstored:
            log.warning("%d results were not stored for want of disk space; their endpoints "
                        "keep them and send them again to the next hub", unstored)
        await self.store.close()
        if self.config.store_path == ":memory:":  # its blobs went to a private temporary dir
            shutil.rmtree(self.blobs.dir, ignore_errors=True)
        if self._tokens is not None:
            self._tokens.close()
        self._stopped.set()
        log.info("hub stopped")

    async def __aenter__(self) -> "Hub":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()


def run_hub(cfg: HubConfig) -> None:
    """Run a hub in this process until SIGINT/SIGTERM (used by `fabric hub`)."""
    import signal

    from fabric.loop import run

    # One connection per endpoint and client: take all the descriptors we may have.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        hub = Hub(cfg)
        await hub.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(hub.shutdown()))
        print(f"fabric hub listening on {hub.address}  (store: {cfg.store_path})", flush=True)
        if cfg.auth:
            store = "" if cfg.store_path == HubConfig().store_path else f" --store {cfg.store_path}"
            print(f"auth is on: create the first admin token with\n"
                  f"    fabric token create --user admin --kind admin{store} --save", flush=True)
        await hub.wait_closed()

    run(main())
