"""The hub: gRPC server, task store, dispatcher."""
from fabric.hub.server import Hub, HubConfig, run_hub

__all__ = ["Hub", "HubConfig", "run_hub"]
