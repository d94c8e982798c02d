"""Start a hub and endpoints as real child processes on this machine.

Used by `make demo`, the process-level tests and the benchmarks: one place
that knows how to start `fabric hub` / `fabric endpoint start`, learn the
port the hub bound, kill and restart either one (the fault tests), and stop
everything (SIGTERM, then SIGKILL after a deadline), so nothing is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

from fabric.names import endpoint_dir

LISTENING = re.compile(r"listening on (\S+:\d+)")
ROOT = Path(__file__).resolve().parents[1]
#: The user LocalFabric's tokens are issued to (and who owns what its endpoints run).
LOCAL_USER = "local"


def provision_tokens(store: str | Path, home: str | Path | None) -> str:
    """Tokens for a hub this process starts (auth is on): a user token, returned and
    written to HOME/token, and an endpoint token for any endpoint name of that user
    (a fleet token, "*") in HOME/endpoint-token, so clients, endpoints and simulators
    started with FABRIC_HOME=HOME find them. Made with the hub's own key."""
    from fabric.credentials import save_token
    from fabric.hub.tokens import TokenBook

    with TokenBook(store) as book:
        user, _ = book.create(LOCAL_USER, "user", ttl_s=7 * 86400)
        fleet, _ = book.create(LOCAL_USER, "endpoint", "*", ttl_s=7 * 86400)
    if home is not None:
        save_token(user, Path(home) / "token")
        save_token(fleet, Path(home) / "endpoint-token")
    return user


def provision_endpoint_token(store: str | Path, home: str | Path, name: str) -> None:
    """An endpoint token for endpoint `name`, where it looks first (its state dir)."""
    from fabric.credentials import save_token
    from fabric.hub.tokens import TokenBook

    path = endpoint_dir(name, home) / "token"
    if path.exists():
        return
    with TokenBook(store) as book:
        tok, _ = book.create(LOCAL_USER, "endpoint", name, ttl_s=7 * 86400)
    save_token(tok, path)


@dataclass
class Child:
    """A child process with its output drained by a thread (so pipes never fill up)."""

    name: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False  # the drain thread has read the last line there will be

    def __post_init__(self) -> None:
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()

    def _drain(self, stream: IO[str] | None) -> None:
        if stream is not None:
            for line in stream:
                with self._seen:
                    self.lines.append(line.rstrip("\n"))
                    self._seen.notify_all()
        with self._seen:
            self._eof = True
            self._seen.notify_all()
        if stream is None:
            return
        # Output ends when the process exits: reap it now, as a shell would, so that
        # it never lingers as a zombie that other tools (`fabric endpoint stop`) see alive.
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass  # something it started still holds the pipe; stop()/kill() reap it
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float,
                 since: int = 0) -> re.Match[str]:
        """The first output line from index `since` on matching `pattern`, waiting up to
        `timeout` seconds. (Pass `since=len(child.lines)` to wait for a new line.)
        An exited process is given up on only once all its output has been read."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines[since:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self._eof and self.proc.poll() is not None):
                    raise TimeoutError(f"{self.name}: no line matching {rx.pattern!r} "
                                       f"(exit code {self.proc.poll()}); output:\n{self.tail()}")
                self._seen.wait(min(left, 0.2))

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.lines[-n:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to this process only (not its workers)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        stop_all([self], timeout)
        return self.proc.returncode

    def terminate(self) -> bool:
        """Send SIGTERM (after SIGCONT, in case it is stopped); False if it had exited."""
        if self.proc.poll() is not None:
            return False
        # A stopped process keeps SIGTERM pending until it runs again.
        self._signal_group(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group: an endpoint's workers die with it."""
        self._signal_group(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)

    def _signal_group(self, sig: int) -> None:
        # The group id is the leader's pid (start_new_session). Only used while the
        # leader is ours (alive or reaped by us just now): Linux does not reuse a pid
        # while a process group of that id has members, so this never hits a stranger.
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(children: Sequence[Child], timeout: float = 10.0) -> None:
    """SIGTERM every child at once, wait up to `timeout` for all, SIGKILL what is left."""
    running = [c for c in children if c.terminate()]
    deadline = time.monotonic() + timeout
    for c in running:
        try:
            c.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        c.kill()  # the leader if it would not go, and stragglers in its group


def spawn_command(name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                  stdin: bool = False) -> Child:
    """Run `argv` in its own process group with this checkout importable.

    With `stdin`, `child.proc.stdin` is a pipe to write to; otherwise /dev/null."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
        start_new_session=True,
    )
    return Child(name, proc)


def spawn(name: str, *args: str, env: dict[str, str] | None = None,
          prefix: Sequence[str] = ()) -> Child:
    """Run `python -m fabric ARGS...` in its own process group.

    `prefix` goes before the interpreter, e.g. `("ip", "netns", "exec", "ns1")`."""
    return spawn_command(name, [*prefix, sys.executable, "-m", "fabric", *args], env)


def start_hub(store: str | Path, *extra: str, port: int = 0, timeout: float = 30.0,
              env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> tuple[Child, str]:
    """Start a hub (on 127.0.0.1 unless `extra` says `--host`); returns the process and
    the address it bound. Unless `extra` has --no-auth, tokens are made for it (see
    `provision_tokens`), and clients in this process use the user token for it."""
    from fabric.credentials import remember

    token = "" if "--no-auth" in extra else provision_tokens(store, (env or {}).get("FABRIC_HOME"))
    child = spawn("hub", "hub", "--port", str(port), "--store", str(store), *extra, env=env,
                  prefix=prefix)
    try:
        address = child.wait_for(LISTENING, timeout).group(1)
    except BaseException:
        child.kill()
        raise
    if token:
        remember(address, token)
    return child, address


def start_endpoint(name: str, hub: str, workers: int = 2, *extra: str,
                   env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Child:
    return spawn(f"endpoint {name}", "endpoint", "start", name, "--hub", hub,
                 "--workers", str(workers), *extra, env=env, prefix=prefix)


def restart_hub_on(port: int, store: str | Path, *extra: str, timeout: float = 30.0,
                   env: dict[str, str] | None = None,
                   prefix: Sequence[str] = ()) -> tuple[Child, str]:
    """Start a hub on a port a killed hub held, retrying while the port is not free yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return start_hub(store, *extra, port=port, timeout=max(1.0, deadline - time.monotonic()),
                             env=env, prefix=prefix)
        except TimeoutError:
            # It exited before listening (the port still held, e.g. TIME_WAIT): try again.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class LocalFabric:
    """A hub and N endpoints as child processes: `with LocalFabric(tmp, 2) as f: f.address`.

    Every child gets FABRIC_HOME=workdir/home, so endpoint state (the result
    outbox) stays in the test's directory. The fault tests use `kill_hub()`,
    `restart_hub()` (same store, same port), `kill_endpoint()`,
    `start_endpoint()` (same name: it finds its state again), `pause_endpoint()`
    and `resume_endpoint()`.
    """

    def __init__(self, workdir: str | Path, endpoints: int | list[str] = 2, workers: int = 2,
                 hub_args: tuple[str, ...] = (), endpoint_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.names = ([f"ep{i}" for i in range(endpoints)] if isinstance(endpoints, int)
                      else list(endpoints))
        self.workers = workers
        self.hub_args = hub_args
        self.endpoint_args = endpoint_args
        self.home = self.workdir / "home"
        self.env = {"FABRIC_HOME": str(self.home), **(env or {})}
        self.store = self.workdir / "hub.db"
        self.hub: Child | None = None
        self.address = ""
        self.port = 0
        self.endpoints: dict[str, Child] = {}
        self.retired: list[Child] = []  # killed or replaced children, kept for their output

    def start(self, timeout: float = 30.0) -> "LocalFabric":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.hub, self.address = start_hub(self.store, *self.hub_args, timeout=timeout,
                                               env=self.env)
            self.port = int(self.address.rsplit(":", 1)[1])
            for name in self.names:
                self.start_endpoint(name)
        except BaseException:
            self.stop()
            raise
        return self

    # ------------------------------------------------------------ faults
    def kill_hub(self) -> None:
        """SIGKILL the hub: no shutdown, no final commit."""
        if self.hub is not None:
            self.hub.kill()
            self.retired.append(self.hub)
            self.hub = None

    def restart_hub(self, timeout: float = 30.0) -> str:
        """Start a hub again on the same store and the same port; returns its address."""
        if self.hub is not None:
            self.hub.stop()
            self.retired.append(self.hub)
        self.hub, address = restart_hub_on(self.port, self.store, *self.hub_args, timeout=timeout,
                                           env=self.env)
        assert address == self.address, (address, self.address)
        return address

    def start_endpoint(self, name: str, *extra: str) -> Child:
        """Start endpoint `name` (again, after a kill: same name, same FABRIC_HOME)."""
        old = self.endpoints.get(name)
        if old is not None:
            old.stop()
            self.retired.append(old)
        if name not in self.names:
            self.names.append(name)
        if "--no-auth" not in self.hub_args:
            provision_endpoint_token(self.store, self.home, name)
        child = start_endpoint(name, self.address, self.workers, *self.endpoint_args, *extra,
                               env=self.env)
        self.endpoints[name] = child
        return child

    def kill_endpoint(self, name: str) -> None:
        """SIGKILL endpoint `name` and its workers, as when its machine dies."""
        child = self.endpoints.pop(name)
        child.kill()
        self.retired.append(child)

    def pause_endpoint(self, name: str) -> None:
        """SIGSTOP the endpoint process (its workers run on): a stalled network, to the hub."""
        self.endpoints[name].signal(signal.SIGSTOP)

    def resume_endpoint(self, name: str) -> None:
        self.endpoints[name].signal(signal.SIGCONT)

    def output(self) -> str:
        """Every child's output, for a failing test's message."""
        children = [*self.retired, *([self.hub] if self.hub else []), *self.endpoints.values()]
        return "\n".join(f"----- {c.name} (pid {c.pid}, exit {c.proc.poll()})\n{c.tail(40)}"
                         for c in children)

    # ------------------------------------------------------------ lifecycle
    def stop(self, timeout: float = 10.0) -> None:
        """Stop the endpoints (all at once), then the hub. Idempotent."""
        stop_all([*self.endpoints.values(), *self.retired], timeout)
        if self.hub is not None:
            self.hub.stop(timeout)

    def __enter__(self) -> "LocalFabric":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
