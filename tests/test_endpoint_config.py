"""Endpoint configuration files, the `fabric endpoint` management commands,
GPU detection (with a fake nvidia-smi) and pinning, and the allow-list."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest
from click.testing import CliRunner

from fabric.cli import main as cli
from fabric.client import Client
from fabric.endpoint import settings
from fabric.endpoint.capabilities import detect_gpus, gpu_ids
from fabric.errors import BadConfig, PermissionDenied

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ------------------------------------------------------------ the file
def test_template_round_trips_and_flags_override_it(home):
    path = settings.write_template("cluster", hub="10.0.0.1:5000", engine="parsl",
                                   provider="slurm", workers=8)
    assert path == home / "endpoints" / "cluster" / "config.toml"
    text = path.read_text()
    assert "# partition" in text  # commented examples for the provider options
    values = settings.load(path)
    cfg = settings.endpoint_config("cluster", values, {}, {})
    assert (cfg.hub, cfg.workers, cfg.engine.kind, cfg.engine.provider) == \
        ("10.0.0.1:5000", 8, "parsl", "slurm")
    assert (cfg.engine.min_blocks, cfg.engine.max_blocks, cfg.allow_functions) == (0, 1, ())

    cfg = settings.endpoint_config("cluster", values, {"workers": 2}, {"max_blocks": 4})
    assert (cfg.workers, cfg.engine.max_blocks, cfg.engine.provider) == (2, 4, "slurm")

    with pytest.raises(BadConfig, match="exists already"):
        settings.write_template("cluster")
    settings.write_template("cluster", force=True)
    assert settings.load(path)["engine"]["kind"] == "local"


@pytest.mark.parametrize("text, message", [
    ("workers = 'many'", "workers must be a int"),
    ("wrokers = 2", "unknown key 'wrokers'"),
    ("[engine]\nkind = 'spark'", "unknown engine 'spark'"),
    ("[engine]\nmin_blocks = 3\nmax_blocks = 2", "min_blocks"),
    ("[engine]\nprovider_options = 3", "provider_options must be a dict"),
    ("hub = ", "not valid TOML"),
])
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(BadConfig, match=message):
        settings.endpoint_config("x", settings.load(path), {}, {})


# ------------------------------------------------------------ the commands
def test_configure_list_delete(home):
    runner = CliRunner()
    out = runner.invoke(cli, ["endpoint", "configure", "gpu-box", "--engine", "dask"])
    assert out.exit_code == 0, out.output
    assert "config.toml" in out.output
    again = runner.invoke(cli, ["endpoint", "configure", "gpu-box"])
    assert again.exit_code == 1 and "exists already" in again.output

    listed = runner.invoke(cli, ["endpoint", "list"], terminal_width=200)
    assert "gpu-box" in listed.output and "dask" in listed.output and "stopped" in listed.output

    gone = runner.invoke(cli, ["endpoint", "delete", "gpu-box", "--yes"])
    assert gone.exit_code == 0, gone.output
    assert not (home / "endpoints" / "gpu-box").exists()
    missing = runner.invoke(cli, ["endpoint", "delete", "gpu-box", "--yes"])
    assert missing.exit_code == 1 and "no endpoint gpu-box" in missing.output


def test_a_bad_file_stops_start_with_a_clear_error(home):
    settings.write_template("broken")
    settings.config_file("broken").write_text("[engine]\nkind = 'spark'\n")
    out = CliRunner().invoke(cli, ["endpoint", "start", "broken"])
    assert out.exit_code == 1
    assert "unknown engine 'spark'" in out.output


def whoami():
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def test_start_detached_from_the_file_then_restart_and_stop(local_fabric, tmp_path):
    fab = local_fabric([])
    # Two GPUs as a batch scheduler would hand them out (no real GPU needed to pin).
    env = {**os.environ, **fab.env, "CUDA_VISIBLE_DEVICES": "0,1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    fabric = [sys.executable, "-m", "fabric"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*fabric, *args], env=env, capture_output=True, text=True,
                              timeout=120)

    assert run("endpoint", "configure", "box", "--hub", fab.address, "--workers", "1").returncode == 0
    # The file says 1 worker; the flag asks for one worker per GPU of the two visible.
    started = run("endpoint", "start", "box", "--pin-gpus", "--detach")
    assert started.returncode == 0, started.stderr
    assert "log:" in started.stdout
    try:
        with Client(fab.address) as c:
            c.wait_for_endpoints(1, timeout=60)
            [info] = [e for e in c.endpoints() if e.name == "box"]
            assert info.online
            fid = c.register_function(whoami)
            seen = set()
            deadline = time.monotonic() + 30
            while len(seen) < 2 and time.monotonic() < deadline:
                tids = c.batch_run(fid, [((), {}) for _ in range(8)], endpoint_id="box")
                seen |= {r[0] for r in c.get_batch_result(tids, timeout=30)}
            assert seen == {"0", "1"}  # two workers, each pinned to its own GPU

        listed = run("endpoint", "list")
        assert "running" in listed.stdout
        restarted = run("endpoint", "restart", "box", "--timeout", "20")
        assert restarted.returncode == 0, restarted.stderr
    finally:
        stopped = run("endpoint", "stop", "box", "--timeout", "20")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in run("endpoint", "list").stdout
    assert "started" in (fab.home / "endpoints" / "box" / "endpoint.log").read_text()


# ------------------------------------------------------------ GPUs
@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"
        echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)"
        """))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return bindir


def test_gpus_are_detected_from_nvidia_smi(fake_nvidia_smi):
    assert detect_gpus() == ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert gpu_ids() == ("0", "1")


def test_cuda_visible_devices_wins_and_empty_means_none(fake_nvidia_smi, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_ids() == ("3",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == ()


def test_no_gpu_no_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpus() == () and gpu_ids() == ()


def gpu_task():
    return "ran"


def test_gpu_endpoint_advertises_and_gets_gpu_tasks(local_fabric, fake_nvidia_smi):
    """A task that needs a GPU goes only to the endpoint that has one (detected
    through the fake nvidia-smi on its PATH)."""
    fab = local_fabric([])
    fab.env["CUDA_VISIBLE_DEVICES"] = ""  # as a batch scheduler says "no GPU for you"
    fab.start_endpoint("cpu", "--workers", "1")
    del fab.env["CUDA_VISIBLE_DEVICES"]  # this one finds the fake nvidia-smi on its PATH
    fab.start_endpoint("gpu", "--workers", "1")
    with Client(fab.address) as c:
        c.wait_for_endpoints(2, timeout=60)
        by_name = {e.name: e for e in c.endpoints()}
        assert by_name["gpu"].capabilities.gpus == 2
        assert by_name["cpu"].capabilities.gpus == 0
        fid = c.register_function(gpu_task)
        tids = [c.run(function_id=fid, gpus=1) for _ in range(4)]
        assert c.get_batch_result(tids, timeout=60) == ["ran"] * 4
        ran_on = {t.task_id: t.endpoint_name for t in c.tasks(limit=100)}
        assert [ran_on[t] for t in tids] == ["gpu"] * 4


# ------------------------------------------------------------ allow-list
def test_allow_list_refuses_other_functions(local_fabric, home):
    fab = local_fabric([])
    with Client(fab.address) as c:
        allowed = c.register_function(gpu_task)
        other = c.register_function(whoami)
    cfg = settings.config_file("strict")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'workers = 1\nallow_functions = ["{allowed}"]\n')
    fab.start_endpoint("strict", "--config", str(cfg))
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        assert c.get_result(c.run(function_id=allowed, endpoint_id="strict"), timeout=30) == "ran"
        # The file's allow-list reaches the hub, which refuses at submission: nothing is stored.
        with pytest.raises(PermissionDenied, match="allow-list"):
            c.run(function_id=other, endpoint_id="strict")



def test_start_flags_beat_the_file_and_the_file_beats_flag_defaults(home, monkeypatch):
    from fabric.cli import endpoint_start
    from fabric.cli.manage import build_config

    settings.write_template("mix", hub="10.0.0.1:1", engine="dask", workers=3)
    monkeypatch.setenv("FABRIC_HUB", "10.9.9.9:9")

    def config_for(*args: str):
        ctx = endpoint_start.make_context("start", ["mix", *args])
        with ctx:
            return build_config("mix", ctx)

    cfg = config_for()
    assert (cfg.hub, cfg.workers, cfg.engine.kind, cfg.prefetch) == ("10.0.0.1:1", 3, "dask", 0)
    cfg = config_for("--workers", "5", "--engine", "local", "--hub", "h:2", "--max-blocks", "3")
    assert (cfg.hub, cfg.workers, cfg.engine.kind, cfg.engine.max_blocks) == ("h:2", 5, "local", 3)
    # A setting the file leaves out still takes the flag's default (here: $FABRIC_HUB).
    settings.config_file("mix").write_text("workers = 2\n")
    assert config_for().hub == "10.9.9.9:9"
