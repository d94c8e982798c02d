"""Plain domain types that cross process boundaries, with their wire codecs.

Each type owns its `to_proto()` / `from_proto()`; nothing outside this module,
`fabric.wire` and the two link/servicer edges touches generated protobuf code.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field
from typing import Any

import psutil

from fabric._proto import fabric_pb2 as pb
from fabric.config import PYTHON_VERSION
from fabric.states import TaskState
from fabric.serialize import ErrorInfo


@dataclass(frozen=True, slots=True)
class Capabilities:
    cores: int
    memory_bytes: int
    gpus: int
    gpu_names: tuple[str, ...]
    os: str
    python_version: str
    hostname: str
    workers: int
    relative_speed: float = 1.0
    cost_per_core_hour: float = 0.0

    @classmethod
    def detect(cls, workers: int, gpu_names: tuple[str, ...] = (), relative_speed: float = 1.0,
               cost_per_core_hour: float = 0.0) -> "Capabilities":
        return cls(
            cores=os.cpu_count() or 1,
            memory_bytes=psutil.virtual_memory().total,
            gpus=len(gpu_names),
            gpu_names=tuple(gpu_names),
            os=f"{platform.system()} {platform.release()}",
            python_version=PYTHON_VERSION,
            hostname=socket.gethostname(),
            workers=workers,
            relative_speed=relative_speed,
            cost_per_core_hour=cost_per_core_hour,
        )

    def to_proto(self) -> pb.Capabilities:
        return pb.Capabilities(
            cores=self.cores, memory_bytes=self.memory_bytes, gpus=self.gpus,
            gpu_names=list(self.gpu_names), os=self.os, python_version=self.python_version,
            hostname=self.hostname, workers=self.workers, relative_speed=self.relative_speed,
            cost_per_core_hour=self.cost_per_core_hour,
        )

    @classmethod
    def from_proto(cls, m: pb.Capabilities) -> "Capabilities":
        return cls(m.cores, m.memory_bytes, m.gpus, tuple(m.gpu_names), m.os,
                   m.python_version, m.hostname, m.workers, m.relative_speed or 1.0,
                   m.cost_per_core_hour)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Capabilities":
        return cls(**{**d, "gpu_names": tuple(d.get("gpu_names", ()))})


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    endpoint_id: str
    name: str
    online: bool
    capabilities: Capabilities | None
    free_slots: int
    queued_at_hub: int
    in_flight: int
    load: float
    last_seen: float
    completed: int
    latency_s: float = 0.0
    bandwidth_Bps: float = 0.0

    def to_proto(self) -> pb.EndpointStatus:
        return pb.EndpointStatus(
            endpoint_id=self.endpoint_id, name=self.name, online=self.online,
            capabilities=self.capabilities.to_proto() if self.capabilities else None,
            free_slots=self.free_slots, queued_at_hub=self.queued_at_hub,
            in_flight=self.in_flight, load=self.load, last_seen=self.last_seen,
            completed=self.completed, latency_s=self.latency_s,
            bandwidth_Bps=self.bandwidth_Bps,
        )

    @classmethod
    def from_proto(cls, m: pb.EndpointStatus) -> "EndpointInfo":
        caps = Capabilities.from_proto(m.capabilities) if m.HasField("capabilities") else None
        return cls(m.endpoint_id, m.name, m.online, caps, m.free_slots, m.queued_at_hub,
                   m.in_flight, m.load, m.last_seen, m.completed, m.latency_s,
                   m.bandwidth_Bps)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task_id: str
    function_id: str
    function_name: str
    state: TaskState
    endpoint_id: str
    endpoint_name: str
    route_reason: str
    submitted_at: float
    completed_at: float
    runtime_s: float
    error_type: str

    def to_proto(self) -> pb.TaskInfo:
        return pb.TaskInfo(
            task_id=self.task_id, function_id=self.function_id,
            function_name=self.function_name, state=int(self.state),
            endpoint_id=self.endpoint_id, endpoint_name=self.endpoint_name,
            route_reason=self.route_reason, submitted_at=self.submitted_at,
            completed_at=self.completed_at, runtime_s=self.runtime_s, error_type=self.error_type,
        )

    @classmethod
    def from_proto(cls, m: pb.TaskInfo) -> "TaskInfo":
        return cls(m.task_id, m.function_id, m.function_name, TaskState(m.state), m.endpoint_id,
                   m.endpoint_name, m.route_reason, m.submitted_at, m.completed_at,
                   m.runtime_s, m.error_type)


@dataclass(frozen=True, slots=True)
class HubStatus:
    version: str
    uptime_s: float
    endpoints_online: int
    endpoints_total: int
    tasks_by_state: dict[str, int] = field(default_factory=dict)
    functions: int = 0
    store_path: str = ""
    #: Since the hub started: results, duplicates_dropped, links_lost, requeued, ...
    counters: dict[str, int] = field(default_factory=dict)
    #: Big payloads (arguments, results over 1 MiB) kept as blobs at the hub.
    blobs: int = 0
    blob_bytes: int = 0

    def to_proto(self) -> pb.StatusReply:
        return pb.StatusReply(
            version=self.version, uptime_s=self.uptime_s, endpoints_online=self.endpoints_online,
            endpoints_total=self.endpoints_total, tasks_by_state=self.tasks_by_state,
            functions=self.functions, store_path=self.store_path, counters=self.counters,
            blobs=self.blobs, blob_bytes=self.blob_bytes,
        )

    @classmethod
    def from_proto(cls, m: pb.StatusReply) -> "HubStatus":
        return cls(m.version, m.uptime_s, m.endpoints_online, m.endpoints_total,
                   dict(m.tasks_by_state), m.functions, m.store_path, dict(m.counters),
                   m.blobs, m.blob_bytes)


def error_to_proto(e: ErrorInfo) -> pb.TaskError:
    return pb.TaskError(type_name=e.type_name, message=e.message, traceback=e.traceback,
                        exception=e.exception, kind=e.kind)


def error_from_proto(m: pb.TaskError) -> ErrorInfo:
    return ErrorInfo(m.type_name, m.message, m.traceback, m.exception, m.kind or "user")
