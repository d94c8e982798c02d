"""Regenerate fabric/_proto from protos/fabric.proto (run by `make protos`).

The proto path is mapped to `fabric/_proto/` so the generated modules import
each other as `fabric._proto.fabric_pb2`, with no post-processing.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "fabric.proto"


def protoc(*out_args: str) -> None:
    from grpc_tools import protoc as _protoc  # dev-only dependency
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    argv = [
        "protoc",
        f"-I{include}",
        f"-Ifabric/_proto={PROTO.parent}",
        *out_args,
        "fabric/_proto/fabric.proto",
    ]
    if _protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


def descriptor_set(path: Path) -> None:
    """Write the compiled FileDescriptorSet of the proto to `path` (used by the drift test)."""
    protoc(f"--descriptor_set_out={path}")


def main() -> None:
    protoc(f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}")
    print(f"generated {ROOT / 'fabric/_proto'} from {PROTO}", file=sys.stderr)


if __name__ == "__main__":
    main()
