from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    QUEUED: _ClassVar[TaskState]
    DISPATCHED: _ClassVar[TaskState]
    SUCCESS: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]
    PURGED: _ClassVar[TaskState]

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    INVALID_REQUEST: _ClassVar[ErrorKind]
    FUNCTION_NOT_FOUND: _ClassVar[ErrorKind]
    ENDPOINT_NOT_FOUND: _ClassVar[ErrorKind]
    TASK_NOT_FOUND: _ClassVar[ErrorKind]
    ENDPOINT_OFFLINE: _ClassVar[ErrorKind]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorKind]
    VERSION_MISMATCH: _ClassVar[ErrorKind]
    AUTH_FAILED: _ClassVar[ErrorKind]
    PERMISSION_DENIED: _ClassVar[ErrorKind]
    NO_ELIGIBLE_ENDPOINT: _ClassVar[ErrorKind]
    HUB_UNAVAILABLE: _ClassVar[ErrorKind]
    INTERNAL: _ClassVar[ErrorKind]
    QUEUE_FULL: _ClassVar[ErrorKind]
    BLOB_NOT_FOUND: _ClassVar[ErrorKind]
    STORAGE_FULL: _ClassVar[ErrorKind]
TASK_STATE_UNSPECIFIED: TaskState
QUEUED: TaskState
DISPATCHED: TaskState
SUCCESS: TaskState
FAILED: TaskState
CANCELLED: TaskState
PURGED: TaskState
ERROR_KIND_UNSPECIFIED: ErrorKind
INVALID_REQUEST: ErrorKind
FUNCTION_NOT_FOUND: ErrorKind
ENDPOINT_NOT_FOUND: ErrorKind
TASK_NOT_FOUND: ErrorKind
ENDPOINT_OFFLINE: ErrorKind
PAYLOAD_TOO_LARGE: ErrorKind
VERSION_MISMATCH: ErrorKind
AUTH_FAILED: ErrorKind
PERMISSION_DENIED: ErrorKind
NO_ELIGIBLE_ENDPOINT: ErrorKind
HUB_UNAVAILABLE: ErrorKind
INTERNAL: ErrorKind
QUEUE_FULL: ErrorKind
BLOB_NOT_FOUND: ErrorKind
STORAGE_FULL: ErrorKind

class TaskError(_message.Message):
    __slots__ = ("type_name", "message", "traceback", "exception", "kind")
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    type_name: str
    message: str
    traceback: str
    exception: bytes
    kind: str
    def __init__(self, type_name: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., exception: _Optional[bytes] = ..., kind: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "state", "value", "error", "endpoint_id", "runtime_s", "cold", "value_blob")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_S_FIELD_NUMBER: _ClassVar[int]
    COLD_FIELD_NUMBER: _ClassVar[int]
    VALUE_BLOB_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    value: bytes
    error: TaskError
    endpoint_id: str
    runtime_s: float
    cold: bool
    value_blob: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., value: _Optional[bytes] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., endpoint_id: _Optional[str] = ..., runtime_s: _Optional[float] = ..., cold: _Optional[bool] = ..., value_blob: _Optional[str] = ...) -> None: ...

class RegisterFunctionRequest(_message.Message):
    __slots__ = ("name", "body", "python_version", "runtime")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    body: bytes
    python_version: str
    runtime: bytes
    def __init__(self, name: _Optional[str] = ..., body: _Optional[bytes] = ..., python_version: _Optional[str] = ..., runtime: _Optional[bytes] = ...) -> None: ...

class RegisterFunctionReply(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class TaskSubmission(_message.Message):
    __slots__ = ("task_id", "function_id", "args", "endpoint", "walltime_s", "max_retries", "gpus", "memory_bytes", "allowed_endpoints", "deadline_s", "args_blob", "runtime")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WALLTIME_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    ARGS_BLOB_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    function_id: str
    args: bytes
    endpoint: str
    walltime_s: float
    max_retries: int
    gpus: int
    memory_bytes: int
    allowed_endpoints: _containers.RepeatedScalarFieldContainer[str]
    deadline_s: float
    args_blob: str
    runtime: bytes
    def __init__(self, task_id: _Optional[str] = ..., function_id: _Optional[str] = ..., args: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., walltime_s: _Optional[float] = ..., max_retries: _Optional[int] = ..., gpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., allowed_endpoints: _Optional[_Iterable[str]] = ..., deadline_s: _Optional[float] = ..., args_blob: _Optional[str] = ..., runtime: _Optional[bytes] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("tasks", "session_id", "policy", "fail_if_offline")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FAIL_IF_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSubmission]
    session_id: str
    policy: str
    fail_if_offline: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSubmission, _Mapping]]] = ..., session_id: _Optional[str] = ..., policy: _Optional[str] = ..., fail_if_offline: _Optional[bool] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("task_ids", "error_kind", "error_message")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    error_kind: str
    error_message: str
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetResultsRequest(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResultsReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("session_id", "task_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("session_id", "task_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cancelled: _Optional[_Iterable[str]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("cores", "memory_bytes", "gpus", "gpu_names", "os", "python_version", "hostname", "workers", "relative_speed", "cost_per_core_hour")
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_NAMES_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_SPEED_FIELD_NUMBER: _ClassVar[int]
    COST_PER_CORE_HOUR_FIELD_NUMBER: _ClassVar[int]
    cores: int
    memory_bytes: int
    gpus: int
    gpu_names: _containers.RepeatedScalarFieldContainer[str]
    os: str
    python_version: str
    hostname: str
    workers: int
    relative_speed: float
    cost_per_core_hour: float
    def __init__(self, cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., gpu_names: _Optional[_Iterable[str]] = ..., os: _Optional[str] = ..., python_version: _Optional[str] = ..., hostname: _Optional[str] = ..., workers: _Optional[int] = ..., relative_speed: _Optional[float] = ..., cost_per_core_hour: _Optional[float] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("endpoint_id", "name", "online", "capabilities", "free_slots", "queued_at_hub", "in_flight", "load", "last_seen", "completed", "latency_s", "bandwidth_Bps")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_HUB_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    name: str
    online: bool
    capabilities: Capabilities
    free_slots: int
    queued_at_hub: int
    in_flight: int
    load: float
    last_seen: float
    completed: int
    latency_s: float
    bandwidth_Bps: float
    def __init__(self, endpoint_id: _Optional[str] = ..., name: _Optional[str] = ..., online: _Optional[bool] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., free_slots: _Optional[int] = ..., queued_at_hub: _Optional[int] = ..., in_flight: _Optional[int] = ..., load: _Optional[float] = ..., last_seen: _Optional[float] = ..., completed: _Optional[int] = ..., latency_s: _Optional[float] = ..., bandwidth_Bps: _Optional[float] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsReply(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "function_id", "function_name", "state", "endpoint_id", "endpoint_name", "route_reason", "submitted_at", "completed_at", "runtime_s", "error_type")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REASON_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, task_id: _Optional[str] = ..., function_id: _Optional[str] = ..., function_name: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., endpoint_id: _Optional[str] = ..., endpoint_name: _Optional[str] = ..., route_reason: _Optional[str] = ..., submitted_at: _Optional[float] = ..., completed_at: _Optional[float] = ..., runtime_s: _Optional[float] = ..., error_type: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("limit", "state", "endpoint")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    state: TaskState
    endpoint: str
    def __init__(self, limit: _Optional[int] = ..., state: _Optional[_Union[TaskState, str]] = ..., endpoint: _Optional[str] = ...) -> None: ...

class ListTasksReply(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("version", "uptime_s", "endpoints_online", "endpoints_total", "tasks_by_state", "functions", "store_path", "counters", "blobs", "blob_bytes")
    class TasksByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_s: float
    endpoints_online: int
    endpoints_total: int
    tasks_by_state: _containers.ScalarMap[str, int]
    functions: int
    store_path: str
    counters: _containers.ScalarMap[str, int]
    blobs: int
    blob_bytes: int
    def __init__(self, version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., endpoints_online: _Optional[int] = ..., endpoints_total: _Optional[int] = ..., tasks_by_state: _Optional[_Mapping[str, int]] = ..., functions: _Optional[int] = ..., store_path: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ..., blobs: _Optional[int] = ..., blob_bytes: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data", "size", "sha256", "task_id", "endpoint_id", "check_only")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_ONLY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    sha256: str
    task_id: str
    endpoint_id: str
    check_only: bool
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., task_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., check_only: _Optional[bool] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("blob_id", "size", "sha256")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    blob_id: str
    size: int
    sha256: str
    def __init__(self, blob_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetBlobRequest(_message.Message):
    __slots__ = ("blob_id", "offset", "task_id", "endpoint_id")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    blob_id: str
    offset: int
    task_id: str
    endpoint_id: str
    def __init__(self, blob_id: _Optional[str] = ..., offset: _Optional[int] = ..., task_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class ShareRequest(_message.Message):
    __slots__ = ("kind", "ref", "users", "revoke")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ref: str
    users: _containers.RepeatedScalarFieldContainer[str]
    revoke: bool
    def __init__(self, kind: _Optional[str] = ..., ref: _Optional[str] = ..., users: _Optional[_Iterable[str]] = ..., revoke: _Optional[bool] = ...) -> None: ...

class ShareReply(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, users: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "capabilities", "held_task_ids", "fabric_version", "allow_functions", "allow_owners")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HELD_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    FABRIC_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OWNERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    capabilities: Capabilities
    held_task_ids: _containers.RepeatedScalarFieldContainer[str]
    fabric_version: str
    allow_functions: _containers.RepeatedScalarFieldContainer[str]
    allow_owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., held_task_ids: _Optional[_Iterable[str]] = ..., fabric_version: _Optional[str] = ..., allow_functions: _Optional[_Iterable[str]] = ..., allow_owners: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("load", "free_slots", "queued", "sent_at", "echo")
    LOAD_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    load: float
    free_slots: int
    queued: int
    sent_at: float
    echo: float
    def __init__(self, load: _Optional[float] = ..., free_slots: _Optional[int] = ..., queued: _Optional[int] = ..., sent_at: _Optional[float] = ..., echo: _Optional[float] = ...) -> None: ...

class EndpointMessage(_message.Message):
    __slots__ = ("hello", "credits", "results", "heartbeat", "draining", "returned", "batch_echo")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    BATCH_ECHO_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    credits: int
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    heartbeat: Heartbeat
    draining: bool
    returned: _containers.RepeatedScalarFieldContainer[str]
    batch_echo: float
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., credits: _Optional[int] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., draining: _Optional[bool] = ..., returned: _Optional[_Iterable[str]] = ..., batch_echo: _Optional[float] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("endpoint_id", "heartbeat_period_s")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    heartbeat_period_s: float
    def __init__(self, endpoint_id: _Optional[str] = ..., heartbeat_period_s: _Optional[float] = ...) -> None: ...

class FunctionBody(_message.Message):
    __slots__ = ("function_id", "body")
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    body: bytes
    def __init__(self, function_id: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class HubMessage(_message.Message):
    __slots__ = ("welcome", "tasks", "functions", "acks", "heartbeat", "cancel", "sent_at")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSubmission]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionBody]
    acks: _containers.RepeatedScalarFieldContainer[str]
    heartbeat: Heartbeat
    cancel: _containers.RepeatedScalarFieldContainer[str]
    sent_at: float
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskSubmission, _Mapping]]] = ..., functions: _Optional[_Iterable[_Union[FunctionBody, _Mapping]]] = ..., acks: _Optional[_Iterable[str]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., cancel: _Optional[_Iterable[str]] = ..., sent_at: _Optional[float] = ...) -> None: ...
