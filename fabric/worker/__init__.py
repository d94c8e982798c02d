"""What a user's function can use while it runs on a Fabric worker.

`state()` returns a dict private to the running function that survives
between its calls in the same worker process (load a model once per worker).
The worker process itself lives in `fabric.worker.main`; this package stays
import-light (no grpc) because every worker imports it.
"""

from fabric.worker.runtime import state

__all__ = ["state"]
