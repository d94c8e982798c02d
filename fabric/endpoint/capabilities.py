"""What an endpoint tells the hub about its machine: cores, memory, GPUs, Python."""

from __future__ import annotations

import os
import shutil
import subprocess

from fabric.models import Capabilities


def detect_gpus() -> tuple[str, ...]:
    """GPU names from CUDA_VISIBLE_DEVICES or `nvidia-smi -L`; () when there are none."""
    return tuple(name for _, name in gpu_inventory())


def gpu_ids() -> tuple[str, ...]:
    """The device ids to pin workers to (CUDA_VISIBLE_DEVICES values), one per GPU."""
    return tuple(dev for dev, _ in gpu_inventory())


def gpu_inventory() -> list[tuple[str, str]]:
    """(device id, name) of each GPU this endpoint may use; [] when there are none.

    CUDA_VISIBLE_DEVICES wins when set, because it is how batch schedulers
    hand a job its share of a node ("" or "-1" means: no GPU for you).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [(i, f"cuda:{i}") for i in ids]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    # Lines look like: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"
    found = []
    for line in out.stdout.splitlines():
        if line.startswith("GPU ") and ":" in line:
            head, rest = line.split(":", 1)
            found.append((head[4:].strip(), rest.split("(UUID")[0].strip()))
    return found


def detect(workers: int, relative_speed: float = 1.0, cost_per_core_hour: float = 0.0) -> Capabilities:
    return Capabilities.detect(workers, detect_gpus(), relative_speed, cost_per_core_hour)


def load_per_core() -> float:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0
