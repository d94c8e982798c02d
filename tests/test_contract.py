"""The wire contract and the public surface do not drift by accident."""

from __future__ import annotations

import importlib

from google.protobuf import descriptor_pb2

from fabric._proto import fabric_pb2
from fabric._proto.generate import descriptor_set


def test_committed_generated_code_matches_the_proto(tmp_path):
    out = tmp_path / "fabric.desc"
    descriptor_set(out)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    # protoc fills in json_name in descriptor sets but not in generated code.
    for message in fresh.message_type:
        _drop_json_names(message)
    committed = descriptor_pb2.FileDescriptorProto.FromString(fabric_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "protos/ changed: run `make protos` and commit the result"


def _drop_json_names(message):
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


def test_generated_stubs_match_the_services():
    grpc_mod = importlib.import_module("fabric._proto.fabric_pb2_grpc")
    for service in fabric_pb2.DESCRIPTOR.services_by_name.values():
        stub = getattr(grpc_mod, f"{service.name}Stub")
        servicer = getattr(grpc_mod, f"{service.name}Servicer")
        for method in service.methods:
            assert hasattr(servicer, method.name), (service.name, method.name)
        assert stub is not None


PUBLIC = {
    "fabric": ["__version__"],
    "fabric.client": ["AsyncClient", "Client", "Executor", "Runtime"],
    "fabric.hub": ["Hub", "HubConfig", "run_hub"],
    "fabric.endpoint": ["Endpoint", "EndpointConfig", "run_endpoint", "stop_endpoint"],
    "fabric.worker": ["state"],
    "scheduler": ["DEFAULT_POLICY", "POLICIES", "Cheapest", "Decision", "EndpointView", "Estimate",
                  "Eta", "Explicit", "Fastest", "Hold", "LeastLoaded", "Policy", "RoundRobin",
                  "RuntimeModel", "SmallestEta", "Tally", "TaskView", "eligible", "make_policy",
                  "route", "route_batch"],
}


def test_public_names_are_stated():
    for module, names in PUBLIC.items():
        mod = importlib.import_module(module)
        assert sorted(mod.__all__) == sorted(names), module
        for n in names:
            assert hasattr(mod, n), (module, n)
