"""Runtimes (issue 15): a function carries its environment; the endpoint builds it once.

Tier 1 for the spec (fabric/runtime_spec.py); tier 3 for the rest: a real hub
and endpoint (LocalFabric), real venvs under the endpoint's state dir, real
installs from PyPI of `humanize`, a package the endpoint's own environment
lacks. Builds are counted from the endpoint's `runtimes/builds.log` (one line
per build started), never from what the fabric reports about itself.
Skipped with the reason when PyPI cannot be reached.
"""

from __future__ import annotations

import asyncio
import importlib.util
import pickle
import platform
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
import pytest

from fabric import config, errors
from fabric._proto import fabric_pb2 as pb
from fabric.client import Client, Executor, Runtime
from fabric.testing import pypi_reachable, wait_until

# Workers (inside runtimes too) cannot import this module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PACKAGE = "humanize"  # small, pure Python, and not in the endpoint's environment
HUMANIZE = Runtime(pip=["humanize>=4"])


needs_pypi = pytest.mark.skipif(not pypi_reachable(PACKAGE), reason="PyPI (pypi.org) is not reachable "
                                "from this machine: runtime builds install from it")


# ---------------------------------------------------------------- what the workers run
def comma(n):
    import sys

    import humanize

    return humanize.intcomma(n), sys.prefix


def size(n):
    import sys

    import humanize

    return humanize.naturalsize(n), sys.prefix


def has_humanize():
    import importlib.util

    return importlib.util.find_spec("humanize") is not None


def importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def env_of(name):
    import os

    return os.environ.get(name)


# ---------------------------------------------------------------- helpers
def runtimes_dir(fab, name: str) -> Path:
    return fab.home / "endpoints" / name / "runtimes"


def builds(fab, name: str, rt: Runtime) -> int:
    """Builds started for `rt` on endpoint `name` (whatever became of them)."""
    book = runtimes_dir(fab, name) / "builds.log"
    if not book.exists():
        return 0
    return sum(f" build {rt.digest} " in line for line in book.read_text().splitlines())


@pytest.fixture(scope="module", autouse=True)
def endpoint_lacks_the_package():
    assert importlib.util.find_spec(PACKAGE) is None, (
        f"{PACKAGE} is installed here: these tests need a package the endpoint lacks")


# ---------------------------------------------------------------- tier 1: the spec
def test_a_spec_is_normalised_and_named_by_its_digest(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\nSix >= 1.16  # a comment\n\nhumanize\n")
    a = Runtime(pip=["humanize", "six>=1.16"], env={"B": "2", "A": "1"})
    b = Runtime(requirements=str(req), env={"A": "1", "B": "2"})
    assert a.pip == b.pip == ("humanize", "six>=1.16")
    assert a.digest == b.digest and a == b
    assert Runtime.from_json(a.to_json()) == a
    assert Runtime(pip=["humanize"]).digest != Runtime(pip=["humanize"], python="3.12").digest
    assert Runtime().is_default and not a.is_default


@pytest.mark.parametrize("kwargs, says", [
    ({"pip": ["humanize==="]}, "'humanize===' is not a valid requirement"),
    ({"pip": ["two words"]}, "'two words' is not a valid requirement"),
    ({"python": "3"}, "python must be a minor version"),
    ({"env": {"1X": "y"}}, "'1X' is not a valid environment variable name"),
    ({"env": {"PYTHONPATH": "/x"}}, "PYTHONPATH is set by the endpoint"),
    ({"requirements": "/nonexistent/requirements.txt"}, "requirements file /nonexistent"),
])
def test_a_bad_spec_is_refused_at_creation_saying_what(kwargs, says):
    with pytest.raises(errors.InvalidRuntime, match=None) as info:
        Runtime(**kwargs)
    assert says in str(info.value)
    assert isinstance(info.value, errors.InvalidRequest)


def test_requirement_file_options_are_refused(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("humanize\n--index-url https://example.org/simple\n")
    with pytest.raises(errors.InvalidRuntime, match="line 2: --index-url is a pip option"):
        Runtime(requirements=str(req))


# ---------------------------------------------------------------- tier 3: real builds
@needs_pypi
@pytest.mark.timeout(300)
def test_two_functions_share_one_build_and_a_restart_reuses_it(local_fabric):
    fab = local_fabric(["rt"], workers=2)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        f_comma = c.register_function(comma, runtime=HUMANIZE)
        f_size = c.register_function(size, runtime=HUMANIZE)
        assert f_comma != c.register_function(comma)  # the runtime is part of the function
        # Both submitted before the first build can finish: they must share it.
        t1 = c.run(1234567, function_id=f_comma, endpoint_id="rt")
        t2 = c.run(3_000_000, function_id=f_size, endpoint_id="rt")
        (v1, prefix1), (v2, prefix2) = c.get_batch_result([t1, t2], timeout=240)
        assert (v1, v2) == ("1,234,567", "3.0 MB")
        venv = runtimes_dir(fab, "rt") / HUMANIZE.digest
        assert Path(prefix1) == Path(prefix2) == venv  # ran inside the runtime's venv
        assert builds(fab, "rt", HUMANIZE) == 1
        # The endpoint's own workers are untouched by it.
        assert c.get_result(c.run(function_id=c.register_function(has_humanize),
                                  endpoint_id="rt"), timeout=60) is False
        # Per call, per batch and per Executor, a runtime overrides the function's.
        f_plain = c.register_function(has_humanize)
        assert c.get_result(c.run(function_id=f_plain, endpoint_id="rt", runtime=HUMANIZE),
                            timeout=60) is True
        ids = c.batch_run(f_plain, [((), {})] * 3, endpoint_id="rt", runtime=HUMANIZE)
        assert c.get_batch_result(ids, timeout=60) == [True] * 3
        # Isolated: the endpoint's own packages (grpc) are not visible inside the runtime.
        f_imp = c.register_function(importable)
        assert c.get_result(c.run("grpc", function_id=f_imp, endpoint_id="rt"), timeout=60)
        assert not c.get_result(c.run("grpc", function_id=f_imp, endpoint_id="rt",
                                      runtime=HUMANIZE), timeout=60)
    with Executor("rt", client=Client(fab.address), runtime=HUMANIZE) as ex:
        assert ex.submit(has_humanize).result(timeout=60) is True

    fab.start_endpoint("rt")  # stops the running one first: a second start, same state dir
    with Client(fab.address) as c:
        wait_until(lambda: any(e.name == "rt" and e.online for e in c.endpoints()), 60,
                   "endpoint rt back online")
        assert c.get_result(c.run(999, function_id=f_comma, endpoint_id="rt"),
                            timeout=120)[0] == "999"
    assert builds(fab, "rt", HUMANIZE) == 1  # the cache was reused, not rebuilt


@needs_pypi
@pytest.mark.timeout(300)
def test_a_failing_build_fails_only_its_tasks_with_pips_message(local_fabric):
    fab = local_fabric(["rt"], workers=2)
    missing = Runtime(pip=["fabric-no-such-package-zz9"])
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        f_bad = c.register_function(has_humanize, runtime=missing)
        f_good = c.register_function(comma, runtime=HUMANIZE)
        bad = c.batch_run(f_bad, [((), {})] * 3, endpoint_id="rt")
        good = c.run(42, function_id=f_good, endpoint_id="rt")
        outcomes = c.get_batch_result([*bad, good], timeout=240, return_exceptions=True)
        for o in outcomes[:3]:
            assert isinstance(o, errors.RuntimeBuildFailed), o
            assert "fabric-no-such-package-zz9" in o.message
            # uv's or pip's own words, not ours
            assert ("not found in the package registry" in o.message
                    or "No matching distribution" in o.message), o.message
        assert outcomes[3][0] == "42"
        assert builds(fab, "rt", missing) == 1  # one build for the three of them
        assert not (runtimes_dir(fab, "rt") / missing.digest).exists()
        # The endpoint keeps serving, its own workers too.
        assert c.get_result(c.run(function_id=c.register_function(has_humanize),
                                  endpoint_id="rt"), timeout=60) is False


@needs_pypi
@pytest.mark.timeout(300)
def test_concurrent_requests_for_one_runtime_share_one_build(tmp_path):
    from fabric.endpoint.runtimes import RuntimeCache

    async def main():
        cache = RuntimeCache(tmp_path / "runtimes")
        await cache.sweep()
        try:
            return await asyncio.gather(*(cache.get(HUMANIZE) for _ in range(3)))
        finally:
            await cache.close()

    got = asyncio.run(main())
    assert {b.path for b in got} == {tmp_path / "runtimes" / HUMANIZE.digest}
    book = (tmp_path / "runtimes" / "builds.log").read_text().splitlines()
    assert sum(HUMANIZE.digest in line for line in book) == 1


@needs_pypi
@pytest.mark.timeout(300)
def test_without_uv_a_runtime_is_built_with_venv_and_pip(tmp_path):
    from fabric.endpoint.runtimes import RuntimeCache, clean_env

    root = tmp_path / "runtimes"

    async def main():
        cache = RuntimeCache(root, use_uv=False)
        await cache.sweep()
        try:
            return await cache.get(HUMANIZE)
        finally:
            await cache.close()

    built = asyncio.run(main())
    assert "with pip" in (root / "builds.log").read_text()
    out = subprocess.run([built.python, "-c", "import humanize, fabric.worker.main, sys; "
                          "print(humanize.intcomma(1000), sys.prefix)"], capture_output=True,
                         text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1,000", str(root / HUMANIZE.digest)]
    # Its scripts name the folder it was renamed to, not the one it was built in.
    script = (built.path / "bin" / "pip").read_text()
    assert f"{built.path}/bin/python" in script and ".tmp-" not in script


class _StallingIndex(socketserver.ThreadingTCPServer):
    """A package index that accepts requests and never answers (until released)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                outer.asked.set()
                outer.release.wait(120)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


@needs_pypi
@pytest.mark.timeout(300)
def test_a_build_killed_midway_is_never_used_and_the_task_completes(local_fabric):
    index = _StallingIndex()
    try:
        # The first endpoint's installs hang on an index that never answers.
        fab = local_fabric(["rt"], workers=1,
                           env={"UV_INDEX_URL": index.url, "PIP_INDEX_URL": index.url})
        with Client(fab.address) as c:
            c.wait_for_endpoints(1, timeout=60)
            fid = c.register_function(comma, runtime=HUMANIZE)
            tid = c.run(7654321, function_id=fid, endpoint_id="rt")
            wait_until(index.asked.is_set, 120, "the build to ask the stalled index")
            root = runtimes_dir(fab, "rt")
            half = wait_until(lambda: [p for p in root.iterdir() if ".tmp-" in p.name], 30,
                              "a half-built runtime folder")
            fab.kill_endpoint("rt")  # SIGKILL: the endpoint and its build, mid-install
            assert all(p.exists() for p in half)
            assert not (root / HUMANIZE.digest).exists()
            # Restarted against the real index: the half-built folder is swept, never used.
            del fab.env["UV_INDEX_URL"], fab.env["PIP_INDEX_URL"]
            fab.start_endpoint("rt")
            assert c.get_result(tid, timeout=240)[0] == "7,654,321"
            assert not any(p.exists() for p in half)
            assert (root / HUMANIZE.digest / "fabric-runtime.json").is_file()
            assert builds(fab, "rt", HUMANIZE) == 2  # the killed one, and the one that finished
    finally:
        index.close()


@needs_pypi
@pytest.mark.timeout(300)
def test_a_python_runtime_runs_on_an_interpreter_of_that_version(local_fabric):
    other = "3.12" if config.PYTHON_VERSION != "3.12" else "3.11"
    from fabric.endpoint.runtimes import python_candidates

    if not any(Path(p).exists() for p in python_candidates(other)):
        pytest.skip(f"no Python {other} on this machine (looked in {python_candidates(other)})")
    fab = local_fabric(["rt"], workers=1)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        # A body pickled by reference loads on any version: what a client on Python
        # `other` registering `platform.python_version` sends.
        body = pickle.dumps(platform.python_version, protocol=4)

        def register(rt: Runtime, version: str) -> str:
            return c._call(c.aio._call("RegisterFunction", pb.RegisterFunctionRequest(
                name="python_version", body=body, python_version=version,
                runtime=rt.to_json()))).function_id

        # This endpoint runs our Python: the hub lets the task through only because
        # its runtime brings an interpreter of the function's version.
        fid = register(Runtime(python=other), other)
        assert c.get_result(c.run(function_id=fid, endpoint_id="rt"),
                            timeout=240).startswith(other + ".")
        # A version the machine lacks: the task fails, naming where the endpoint looked.
        fid = register(Runtime(python="3.99"), "3.99")
        with pytest.raises(errors.RuntimeBuildFailed, match="no Python 3.99 interpreter") as info:
            c.get_result(c.run(function_id=fid, endpoint_id="rt"), timeout=120)
        assert info.value.type_name == "VersionMismatch"
        # A runtime that cannot load the function's body is refused at registration.
        with pytest.raises(errors.VersionMismatch, match="cannot load it"):
            c.register_function(has_humanize, runtime=Runtime(python=other))


@pytest.mark.timeout(120)
def test_a_setup_line_is_refused_and_env_reaches_the_workers(local_fabric):
    fab = local_fabric(["rt"], workers=1)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        fid = c.register_function(env_of, runtime=Runtime(setup="touch /tmp/fabric-setup-ran"))
        with pytest.raises(errors.RuntimeBuildFailed, match="does not run setup commands"):
            c.get_result(c.run("HOME", function_id=fid, endpoint_id="rt"), timeout=60)
        # An environment alone needs no venv: the endpoint's Python, with the variables.
        fid = c.register_function(env_of, runtime=Runtime(env={"FABRIC_TEST_RUNTIME_VAR": "1"}))
        assert c.get_result(c.run("FABRIC_TEST_RUNTIME_VAR", function_id=fid, endpoint_id="rt"),
                            timeout=60) == "1"
        plain = c.register_function(env_of)
        assert c.get_result(c.run("FABRIC_TEST_RUNTIME_VAR", function_id=plain, endpoint_id="rt"),
                            timeout=60) is None
        # The hub checks a spec that did not come from a Runtime: refused, saying why.
        bad = b'{"v":1,"pip":["two words"],"python":"","env":{},"setup":""}'
        with pytest.raises(errors.InvalidRequest, match="'two words' is not a valid requirement"):
            c._call(c.aio._call("RegisterFunction", pb.RegisterFunctionRequest(
                name="x", body=b"x", python_version=config.PYTHON_VERSION, runtime=bad)))
        sub = c.aio.new_submission(plain, ("HOME",), {}, "rt")
        sub.runtime = b"not json"
        with pytest.raises(errors.InvalidRequest, match=f"task {sub.task_id}: the runtime spec "
                                                        "is not JSON"):
            c._call(c.aio.submit([sub]))
    assert not runtimes_dir(fab, "rt").joinpath("builds.log").exists()  # nothing was built
