"""Endpoint configuration files: `$FABRIC_HOME/endpoints/NAME/config.toml`.

`fabric endpoint configure NAME` writes a commented template; `fabric
endpoint start NAME` reads it, and flags given on the command line override
it. TOML because Python reads it with the standard library (tomllib) and it
takes comments; the template is written as text so the comments survive.

Pure apart from reading and writing that one file: `load` returns plain
values, `endpoint_config` turns them (plus overrides) into an EndpointConfig,
and every unknown key or wrongly typed value is a BadConfig naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from fabric import config, names
from fabric.endpoint.agent import EndpointConfig
from fabric.endpoint.engines import EngineConfig
from fabric.errors import BadConfig, EngineUnavailable

FILE_NAME = "config.toml"

#: Top-level keys of the file -> (EndpointConfig field, type).
ENDPOINT_KEYS: dict[str, tuple[str, type]] = {
    "hub": ("hub", str),
    "token": ("token", str),
    "workers": ("workers", int),
    "prefetch": ("prefetch", int),
    "max_retries": ("max_retries", int),
    "output_tail": ("output_tail_bytes", int),
    "heartbeat_misses": ("heartbeat_misses", int),
    "drain_timeout_s": ("drain_timeout_s", float),
    "speed": ("relative_speed", float),
    "cost": ("cost_per_core_hour", float),
    "tls_ca": ("tls_ca", str),
    "allow_functions": ("allow_functions", list),
    "allow_owners": ("allow_owners", list),
}
#: Keys of the [engine] table (EngineConfig fields) and their types.
ENGINE_KEYS: dict[str, type] = {f.name: (dict if f.name == "provider_options" else
                                         type(f.default) if f.default is not dataclasses.MISSING
                                         else str)
                                for f in dataclasses.fields(EngineConfig)}


def endpoint_dir(name: str) -> Path:
    return names.endpoint_dir(name)


def config_file(name: str) -> Path:
    return endpoint_dir(name) / FILE_NAME


def template(name: str, hub: str = config.DEFAULT_HUB_ADDRESS, engine: str = "local",
             provider: str = "local", workers: int | None = None) -> str:
    """The commented file `fabric endpoint configure` writes."""
    workers = workers or os.cpu_count() or 1
    return f'''# Fabric endpoint "{name}". `fabric endpoint start {name}` reads this file;
# flags given to `fabric endpoint start` override what is here.

hub = "{hub}"          # the hub this endpoint dials out to (host:port)
token = ""                         # the endpoint's token, when the hub requires one
workers = {workers}                        # local engine: worker processes; parsl/dask: workers per node
prefetch = 0                       # tasks held beyond what keeps the workers busy
max_retries = {config.DEFAULT_MAX_RETRIES}                    # reruns of a task whose worker died, unless the task says
output_tail = {config.DEFAULT_OUTPUT_TAIL_BYTES}                # bytes kept of each task's output (the last); 0 = none
tls_ca = ""                        # CA certificate (PEM) to verify a TLS hub; "" = $FABRIC_TLS_CA
allow_functions = []               # run only these function ids ...
allow_owners = []                  # ... or functions registered by these users; both [] = any

[engine]
kind = "{engine}"                   # local | parsl | dask
provider = "{provider}"               # parsl: local | slurm | pbspro | kubernetes
init_blocks = 1                    # blocks started at once (parsl: batch jobs; dask: sets of workers)
min_blocks = 0                     # autoscaling: never fewer blocks than this
max_blocks = 1                     # ... nor more than this (min = max: no autoscaling)
nodes_per_block = 1                # parsl: nodes per batch job
scheduler_address = ""             # dask: use this running scheduler (tcp://host:8786), else start one
strategy_period_s = 5.0            # how often the autoscaler looks at the queue
max_idletime_s = 120.0             # an idle block is released after this long (down to min_blocks)
pin_gpus = false                   # one worker per GPU, each seeing only its own GPU

[engine.provider_options]          # passed to the Parsl provider as keyword arguments
# partition = "gpu"                # slurm
# account = "my-allocation"        # slurm, pbspro
# queue = "workq"                  # pbspro
# walltime = "01:00:00"
# scheduler_options = "#SBATCH --gres=gpu:4"
# worker_init = "source ~/venvs/fabric/bin/activate"
# image = "python:3.11"            # kubernetes
# namespace = "default"            # kubernetes
'''


def write_template(name: str, force: bool = False, **values: Any) -> Path:
    path = config_file(name)
    if path.exists() and not force:
        raise BadConfig(f"{path} exists already; edit it, or pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = template(name, **values)
    load_text(text, str(path))  # the template must itself be a valid file
    path.write_text(text)
    return path


def load(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadConfig(f"cannot read endpoint configuration {path}: {exc.strerror}") from None
    return load_text(text, str(path))


def load_text(text: str, where: str) -> dict[str, Any]:
    """Parse and check a configuration; returns {key: value} with an "engine" dict."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadConfig(f"{where}: not valid TOML: {exc}") from None
    engine = data.pop("engine", {})
    if not isinstance(engine, dict):
        raise BadConfig(f"{where}: 'engine' must be a table ([engine])")
    _check(data, {k: t for k, (_, t) in ENDPOINT_KEYS.items()}, where, "")
    _check(engine, ENGINE_KEYS, where, "engine.")
    return {**data, "engine": engine}


def _check(values: dict[str, Any], types: dict[str, type], where: str, prefix: str) -> None:
    for key, value in values.items():
        if key not in types:
            raise BadConfig(f"{where}: unknown key {prefix}{key!r}; known: "
                            f"{', '.join(sorted(types))}")
        want = types[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
              else isinstance(value, int) and not isinstance(value, bool) if want is int
              else isinstance(value, want))
        if not ok:
            raise BadConfig(f"{where}: {prefix}{key} must be a {want.__name__}, "
                            f"not {type(value).__name__} ({value!r})")


def endpoint_config(name: str, file_values: dict[str, Any], overrides: dict[str, Any],
                    engine_overrides: dict[str, Any]) -> EndpointConfig:
    """File values, then overrides (flags the user gave), into an EndpointConfig.

    `overrides` use EndpointConfig field names, `engine_overrides` EngineConfig ones."""
    names.endpoint_name(name)  # before it names a folder, a log or a daemon
    fields: dict[str, Any] = {}
    for key, value in file_values.items():
        if key == "engine":
            continue
        attr, want = ENDPOINT_KEYS[key]
        if value == "" and attr in ("token", "tls_ca"):
            continue  # unset: the usual lookup (environment, token files) applies
        fields[attr] = tuple(value) if want is list else (float(value) if want is float else value)
    fields.update(overrides)
    engine = {k: (float(v) if ENGINE_KEYS[k] is float else v)
              for k, v in file_values.get("engine", {}).items()}
    engine.update(engine_overrides)
    try:
        eng = EngineConfig(**engine).validate()
    except EngineUnavailable as exc:
        raise BadConfig(f"endpoint {name}: {exc}") from None
    cfg = EndpointConfig(name=name, engine=eng, **fields)
    if cfg.workers < 1:
        raise BadConfig(f"endpoint {name}: workers must be at least 1")
    if cfg.output_tail_bytes < 0:
        raise BadConfig(f"endpoint {name}: output_tail must be 0 or more bytes")
    return cfg


def configured() -> list[str]:
    """Names of the endpoints with a configuration file or state folder here."""
    root = names.endpoints_root()
    if not root.is_dir():
        return []
    # A folder someone made by hand with a name no endpoint can have is not one.
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                  and names.ENDPOINT_NAME.fullmatch(p.name))
