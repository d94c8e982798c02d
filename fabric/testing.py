"""Tools to check a fabric's delivery guarantees, shared by the fault tests and
the chaos benchmark, and `wait_until`, the one way tests wait for a condition.

`mark` is a task that appends one line per execution to a ledger file (with
O_APPEND, so concurrent workers never interleave a line); `Ledger` reads it
back. Comparing the ledger with the results a client received tells lost
tasks (no result), re-executions (two lines for one input) and duplicates
(two different results for one task) apart. Workers import this module by
reference: it ships with fabric.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


def mark(ledger: str, i: int, sleep_s: float = 0.0) -> int:
    """Record this execution, then (optionally) work a little; the value names the input."""
    import os

    _record(ledger, f"{i} {os.getpid()}", sleep_s)
    return value_of(i)


def mark_run(ledger: str, i: int, sleep_s: float = 0.0) -> tuple[int, str]:
    """Like `mark`, but every execution returns a value of its own: (value_of(i), run id),
    the run id also written to the ledger line. A result replaced by another execution's,
    or a second result handed out, shows as a different run id."""
    import os

    run = f"{os.getpid()}-{os.urandom(6).hex()}"
    _record(ledger, f"{i} {os.getpid()} {run}", sleep_s)
    return value_of(i), run


def _record(ledger: str, line: str, sleep_s: float) -> None:
    """One O_APPEND write per line (lines from many workers never mix), then the work."""
    import os
    import time

    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    if sleep_s:
        time.sleep(sleep_s)


def value_of(i: int) -> int:
    """What `mark(ledger, i)` returns."""
    return 3 * i + 1


class Ledger:
    """The file `mark` appends to: one "<input> <pid>" line per execution
    (`mark_run` adds the run id: "<input> <pid> <run id>")."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._size = 0  # bytes already counted by count()
        self._lines = 0

    def __str__(self) -> str:
        return str(self.path)

    def runs(self) -> list[tuple[int, int]]:
        """Every (input, worker pid) so far."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # a line still being written has no newline yet
        return [(int(f[0]), int(f[1])) for f in (line.split() for line in lines)]

    def run_ids(self) -> dict[int, list[str]]:
        """The run ids (`mark_run`) each input ran under, one per execution."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        out: dict[int, list[str]] = {}
        for f in (line.split() for line in text.split("\n")[:-1]):
            if len(f) > 2:
                out.setdefault(int(f[0]), []).append(f[2])
        return out

    def count(self) -> int:
        """Executions so far; reads only what was appended since the last call, so it
        is cheap to poll while tens of thousands of tasks run."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._size)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self._size += end
        self._lines += chunk[:end].count(b"\n")
        return self._lines

    def by_input(self) -> dict[int, list[int]]:
        """The worker pids each input ran in, one per execution."""
        out: dict[int, list[int]] = {}
        for i, pid in self.runs():
            out.setdefault(i, []).append(pid)
        return out


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `cond` until it returns something true (returned), or fail after
    `timeout` seconds saying what was awaited: every wait in a test has a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def pypi_reachable(package: str = "humanize") -> bool:
    """Whether this machine reaches PyPI (runtime builds install from it)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"https://pypi.org/simple/{package}/", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def with_hub(workdir: Path | str, body: Callable[[Any], Any], timeout: float = 60.0,
             **config: Any) -> None:
    """Run `await body(hub)` on a fresh event loop with an in-process Hub (auth on)
    listening on 127.0.0.1:0, its store in `workdir`: the tier-2 tests' fixture. This
    process's clients get a user token for it, and endpoints one for any name."""
    import asyncio
    import os

    from fabric.credentials import remember
    from fabric.hub.server import Hub, HubConfig
    from fabric.hub.tokens import TokenBook
    from fabric.loop import run

    store = Path(workdir) / "hub.db"
    with TokenBook(store) as book:
        user, _ = book.create("local")
        fleet, _ = book.create("local", "endpoint", "*")

    async def main() -> None:
        async with Hub(HubConfig(port=0, store_path=str(store), **config)) as hub:
            remember(hub.address, user)
            await asyncio.wait_for(body(hub), timeout)

    os.environ["FABRIC_ENDPOINT_TOKEN"] = fleet
    try:
        run(main())
    finally:
        del os.environ["FABRIC_ENDPOINT_TOKEN"]
