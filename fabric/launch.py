"""Start a hub and endpoints as real child processes on this machine.

Used by `make demo`, the process-level tests and the benchmarks: one place
that knows how to start `fabric hub` / `fabric endpoint start`, learn the
port the hub bound, and stop everything (SIGTERM, then SIGKILL after a
deadline), so nothing is left behind.
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
from typing import IO, Any

LISTENING = re.compile(r"listening on (\S+:\d+)")


@dataclass
class Child:
    """A child process with its output drained by a thread (so pipes never fill up)."""

    name: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()

    def _drain(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`, waiting up to `timeout` seconds."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"{self.name}: no line matching {rx.pattern!r} "
                                       f"(exit code {self.proc.poll()}); output:\n{tail}")
                self._seen.wait(min(left, 0.2))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            # The whole process group: an endpoint's workers die with it.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def spawn(name: str, *args: str, env: dict[str, str] | None = None) -> Child:
    """Run `python -m fabric ARGS...` in its own process group."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    root = str(Path(__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, full_env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True,
    )
    return Child(name, proc)


def start_hub(store: str | Path, *extra: str, port: int = 0, timeout: float = 30.0,
              env: dict[str, str] | None = None) -> tuple[Child, str]:
    """Start a hub on 127.0.0.1; returns the process and the address it bound."""
    child = spawn("hub", "hub", "--port", str(port), "--store", str(store), *extra, env=env)
    address = child.wait_for(LISTENING, timeout).group(1)
    return child, address


def start_endpoint(name: str, hub: str, workers: int = 2, *extra: str,
                   env: dict[str, str] | None = None) -> Child:
    return spawn(f"endpoint {name}", "endpoint", "start", name, "--hub", hub,
                 "--workers", str(workers), *extra, env=env)


class LocalFabric:
    """A hub and N endpoints as child processes: `with LocalFabric(tmp, 2) as f: f.address`."""

    def __init__(self, workdir: str | Path, endpoints: int | list[str] = 2, workers: int = 2,
                 hub_args: tuple[str, ...] = (), endpoint_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.names = ([f"ep{i}" for i in range(endpoints)] if isinstance(endpoints, int)
                      else list(endpoints))
        self.workers = workers
        self.hub_args = hub_args
        self.endpoint_args = endpoint_args
        self.hub: Child | None = None
        self.address = ""
        self.endpoints: dict[str, Child] = {}

    def start(self, timeout: float = 30.0) -> "LocalFabric":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.hub, self.address = start_hub(self.workdir / "hub.db", *self.hub_args,
                                               timeout=timeout)
            for name in self.names:
                self.endpoints[name] = start_endpoint(name, self.address, self.workers,
                                                      *self.endpoint_args)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for child in self.endpoints.values():
            child.stop()
        if self.hub is not None:
            self.hub.stop()

    def __enter__(self) -> "LocalFabric":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
