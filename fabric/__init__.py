"""Fabric: register a Python function once, run it on any endpoint through one hub.

The client API lives in `fabric.client` (Client, AsyncClient, Executor);
errors in `fabric.errors`; per-function worker state in `fabric.worker.state`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
