"""fabric.launch's Child: waiting on a child's output lines."""

from __future__ import annotations

import sys

import pytest

from fabric.launch import spawn_command

# Exits at once, while output it caused is still to come: a helper it started
# (sharing its stdout) prints the last line a moment later. Whatever the reason
# lines arrive after the exit, wait_for must read the output to its end.
LATE_LINE = """
import subprocess, sys
print("first line", flush=True)
subprocess.Popen(["sh", "-c", "sleep 0.5; echo the last line"])
"""


def test_wait_for_reads_an_exited_process_to_the_end_before_giving_up():
    child = spawn_command("printer", [sys.executable, "-c", LATE_LINE])
    try:
        assert child.proc.wait(30) == 0
        assert child.wait_for(r"^the last line$", 30)
        with pytest.raises(TimeoutError, match="exit code 0"):
            child.wait_for(r"never printed", 30)  # all read, and it exited: fails at once
    finally:
        child.kill()
