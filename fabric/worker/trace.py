"""Per-hop timestamps for latency work: FABRIC_TRACE=DIR makes each process append
`task_id stage t` lines (t = CLOCK_MONOTONIC, shared by all processes on Linux) to
DIR/<pid>.trace. Off (one global check) unless the variable is set."""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("FABRIC_TRACE")
_file = None
ON = bool(_DIR)


def trace(task_id: str, stage: str) -> None:
    global _file
    if _file is None:
        _file = open(os.path.join(_DIR, f"{os.getpid()}.trace"), "a", buffering=1)  # type: ignore[arg-type]
    _file.write(f"{task_id} {stage} {time.clock_gettime(time.CLOCK_MONOTONIC)!r}\n")
