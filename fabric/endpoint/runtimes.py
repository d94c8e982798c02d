"""Building runtimes: one virtual environment per runtime digest, built once, cached.

`RuntimeCache` is used by the local engine (fabric/endpoint/runtime_pools.py):
`await cache.get(runtime)` returns a built runtime (its interpreter and its
workers' environment), building it first if needed.

- Builds run as subprocesses awaited on the loop (`uv venv` + `uv pip install`
  when uv is installed, else `python -m venv` + pip), never blocking it; a
  kill of the endpoint's process group takes them down too.
- Concurrent requests for one digest share one build (one future per digest).
- A runtime is built in `runtimes/DIGEST.tmp-XXXX` and renamed to
  `runtimes/DIGEST` only once complete (marker file written last), so a build
  cut short by a crash or kill -9 is never used; leftovers are swept at start.
- The worker code is made importable with a `fabric` symlink in the venv's
  site-packages pointing at this endpoint's own package (the same version as
  the endpoint, whose frames the worker speaks), plus the worker's one
  dependency, cloudpickle, at the endpoint's version.
- A failed build raises BuildError with pip's own output tail; the log stays
  in `runtimes/DIGEST.log`. Every build start is one line in `builds.log`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
from packaging.requirements import Requirement

import fabric
from fabric.config import PYTHON_VERSION
from fabric.runtime_spec import Runtime

log = logging.getLogger("fabric.endpoint.runtimes")

MARKER = "fabric-runtime.json"
#: Touched each time a runtime starts serving: its last use, for listing and pruning.
LAST_USED = ".last-used"
#: A failed build is remembered this long: a burst of tasks for a spec that cannot
#: be built fails at once instead of building it again for each.
FAILED_RETRY_S = 30.0
TAIL_LINES = 30
#: The endpoint's own fabric package, linked into every runtime.
FABRIC_PACKAGE = Path(fabric.__file__).resolve().parent
#: Variables of the endpoint's environment that would point a runtime's Python
#: at the endpoint's packages instead of its own.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


class BuildError(Exception):
    """A runtime could not be provided; `type_name` says what kind of failure."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message


@dataclass(frozen=True)
class BuiltRuntime:
    digest: str
    path: Path | None  # the venv; None: the endpoint's own Python serves (env only)
    python: str  # the interpreter runtime workers are started with

    @property
    def version(self) -> str:
        return json.loads((self.path / MARKER).read_text())["python_version"]


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in _LEAKY}


def find_uv() -> str | None:
    """uv from the `uv` package (the `runtimes` extra) or on PATH; None if neither."""
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def python_candidates(version: str) -> list[str]:
    """Where an interpreter of `version` ("3.12") may be, in order of preference."""
    exe = f"python{version}"
    out = [sys.executable] if version == PYTHON_VERSION else []
    on_path = shutil.which(exe)
    if on_path:
        out.append(on_path)
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    out += [str(p / "bin" / exe) for p in sorted(pyenv.glob(f"{version}.*"), reverse=True)]
    out += [f"/usr/local/bin/{exe}", f"/usr/bin/{exe}"]
    return list(dict.fromkeys(out))


async def find_python(version: str) -> str:
    """An interpreter that really is Python `version` (a pyenv shim on PATH may not
    run at all), or VersionMismatch-as-BuildError naming every place looked at."""
    tried = python_candidates(version)
    for cand in tried:
        if not os.access(cand, os.X_OK):
            continue
        code, out = await _output([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  clean_env())
        if code == 0 and out.strip() == version:
            return cand
    raise BuildError("VersionMismatch", f"no Python {version} interpreter on this endpoint "
                     f"machine; looked for: {', '.join(tried)} (and python{version} on PATH)")


class RuntimeCache:
    """`root/DIGEST` venvs. Start with `await sweep()`; `await get(rt)`; `close()`."""

    def __init__(self, root: Path, uv: str | None = None, use_uv: bool = True) -> None:
        self.root = Path(root)
        self.uv = (uv or find_uv()) if use_uv else None
        self._builds: dict[str, asyncio.Future[BuiltRuntime]] = {}

    async def sweep(self) -> int:
        """Remove what builds cut short left behind; returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        stale = [p for p in self.root.iterdir() if ".tmp-" in p.name and p.is_dir()]
        for p in stale:
            log.info("removing half-built runtime %s", p.name)
            await asyncio.to_thread(shutil.rmtree, p, True)
        return len(stale)

    def ready(self, rt: Runtime) -> BuiltRuntime | None:
        """The built runtime if it is complete on disk (never a half-built one)."""
        path = self.root / rt.digest
        if not (path / MARKER).is_file():
            return None
        return BuiltRuntime(rt.digest, path, str(path / "bin" / "python"))

    @staticmethod
    def worker_env(rt: Runtime, path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
        """The whole environment of the runtime's workers: `base` (default: ours) less
        what would import the endpoint's packages, plus the runtime's own variables."""
        env = clean_env(base)
        env.update(rt.env)
        env["VIRTUAL_ENV"] = str(path)
        env["PATH"] = os.pathsep.join(p for p in (str(path / "bin"), env.get("PATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def get(self, rt: Runtime) -> BuiltRuntime:
        """The runtime, built if needed; every caller for one digest shares one build."""
        if not (rt.pip or rt.setup) and rt.python in ("", PYTHON_VERSION):
            return BuiltRuntime(rt.digest, None, sys.executable)  # env only: nothing to build
        fut = self._builds.get(rt.digest)
        if fut is None:
            built = self.ready(rt)
            if built is not None:
                _mark_used(built)
                return built
            fut = asyncio.ensure_future(self._build(rt))
            self._builds[rt.digest] = fut
            fut.add_done_callback(lambda f, d=rt.digest: self._settled(d, f))
        built = await asyncio.shield(fut)
        _mark_used(built)
        return built

    def _settled(self, digest: str, fut: asyncio.Future[BuiltRuntime]) -> None:
        if fut.cancelled():
            self._builds.pop(digest, None)
        elif fut.exception() is not None:
            asyncio.get_running_loop().call_later(FAILED_RETRY_S, self._forget, digest, fut)
        else:
            self._builds.pop(digest, None)  # on disk now: ready() finds it

    def _forget(self, digest: str, fut: asyncio.Future[BuiltRuntime]) -> None:
        if self._builds.get(digest) is fut:
            del self._builds[digest]

    async def close(self) -> None:
        """Stop builds under way (their subprocesses are killed, their folders removed)."""
        jobs = [f for f in self._builds.values() if not f.done()]
        for f in jobs:
            f.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        for f in self._builds.values():
            if f.done() and not f.cancelled():
                f.exception()  # retrieved: a failure nobody awaited is not "never retrieved"

    # ------------------------------------------------------------ one build
    async def _build(self, rt: Runtime) -> BuiltRuntime:
        if rt.setup:
            raise BuildError("SetupRefused", f"runtime {rt.digest[:12]} has a setup line "
                             f"({rt.setup!r}); this endpoint does not run setup commands (they "
                             "run only where the endpoint allows them, which this version "
                             "cannot do yet)")
        self.root.mkdir(parents=True, exist_ok=True)
        python = await find_python(rt.python) if rt.python else sys.executable
        final = self.root / rt.digest
        tmp = self.root / f"{rt.digest}.tmp-{secrets.token_hex(4)}"
        started = time.time()
        with open(self.root / "builds.log", "a") as book:
            book.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} build "
                       f"{rt.digest} {rt.describe()} with {'uv' if self.uv else 'pip'}\n")
        log.info("building runtime %s in %s", rt.describe(), tmp)
        try:
            with open(self.root / f"{rt.digest}.log", "w") as build_log:
                await self._install(rt, python, tmp, build_log)
                version = await self._check(tmp, rt, build_log)
            _retarget_scripts(tmp, final)
            (tmp / MARKER).write_text(json.dumps({
                "digest": rt.digest, "spec": rt.to_dict(), "python_version": version,
                "builder": "uv" if self.uv else "pip", "built_at": time.time(),
                "build_s": time.time() - started}, indent=1))
            os.rename(tmp, final)  # the commit point: complete, or not there at all
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
            raise
        log.info("runtime %s built in %.1fs", rt.digest[:12], time.time() - started)
        built = self.ready(rt)
        assert built is not None
        return built

    async def _install(self, rt: Runtime, python: str, tmp: Path, build_log) -> None:
        packages = list(rt.pip)
        if not any(Requirement(p).name == "cloudpickle" for p in packages):
            packages.append(f"cloudpickle=={cloudpickle.__version__}")  # what the worker needs
        venv_python = str(tmp / "bin" / "python")
        if self.uv:
            steps = [("create the venv", [self.uv, "venv", "--python", python, str(tmp)]),
                     ("pip install", [self.uv, "pip", "install", "--python", venv_python,
                                      *packages])]
        else:
            steps = [("create the venv", [python, "-m", "venv", str(tmp)]),
                     ("pip install", [venv_python, "-m", "pip", "install", "--no-input",
                                      "--disable-pip-version-check", *packages])]
        for what, cmd in steps:
            build_log.write(f"$ {' '.join(cmd)}\n")
            build_log.flush()
            code, out = await _output(cmd, clean_env())
            build_log.write(out)
            build_log.flush()
            if code != 0:
                raise BuildError("RuntimeBuildFailed", f"runtime {rt.describe()}: {what} failed "
                                 f"(exit {code}):\n{_tail(out)}\n(build log: "
                                 f"{self.root / (rt.digest + '.log')})")
        site = sorted(tmp.glob("lib/python*/site-packages"))
        if not site:
            raise BuildError("RuntimeBuildFailed", f"runtime {rt.describe()}: the venv in {tmp} "
                             "has no site-packages folder")
        if (site[0] / "fabric").exists():
            raise BuildError("RuntimeBuildFailed", f"runtime {rt.describe()}: its packages "
                             "install a module named 'fabric', which would hide the worker's "
                             "own fabric package")
        os.symlink(FABRIC_PACKAGE, site[0] / "fabric", target_is_directory=True)

    async def _check(self, tmp: Path, rt: Runtime, build_log) -> str:
        """The venv's Python starts a worker's imports; returns its version."""
        code, out = await _output([str(tmp / "bin" / "python"), "-c",
                                   "import sys, fabric.worker.main; "
                                   "print('%d.%d' % sys.version_info[:2])"], clean_env())
        build_log.write(f"$ check: python -c 'import fabric.worker.main'\n{out}")
        version = out.strip().splitlines()[-1] if code == 0 and out.strip() else ""
        if code != 0 or (rt.python and version != rt.python):
            raise BuildError("RuntimeBuildFailed", f"runtime {rt.describe()}: the worker does "
                             f"not start in it (exit {code}):\n{_tail(out)}")
        return version


def _mark_used(built: BuiltRuntime) -> None:
    """Best effort: a read-only or vanished folder must not fail a task."""
    if built.path is not None:
        try:
            (built.path / LAST_USED).touch()
        except OSError:
            pass


async def _output(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd` (argv, never a shell line); (exit code, stdout+stderr). Killed if
    the awaiting task is cancelled (endpoint shutdown)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env)
    except OSError as exc:
        return 127, f"{cmd[0]}: {exc}\n"
    try:
        out, _ = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _retarget_scripts(tmp: Path, final: Path) -> None:
    """Scripts in bin/ name the folder they were installed in; point them at the
    folder the runtime will live in (the rename comes next)."""
    old, new = str(tmp).encode(), str(final).encode()
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file() or script.stat().st_size > 1 << 20:
            continue
        data = script.read_bytes()
        if old in data and b"\0" not in data[:1024]:
            script.write_bytes(data.replace(old, new))
