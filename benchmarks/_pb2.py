"""Google protobuf classes for proto/, compiled at bench time with grpc_tools.protoc.

Used by the driver's host (fast C parsing, so the host stays cheap) and by the bare grpcio
baseline worker, which finds the compiled modules through ``WORKERKIT_BENCH_PB2``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = (
    "FunctionRpc.proto",
    "identity/ClaimsIdentityRpc.proto",
    "shared/NullableTypes.proto",
)
ENV = "WORKERKIT_BENCH_PB2"


def compile_into(out: Path) -> Path:
    """Compile proto/ into `out` (importable as ``FunctionRpc_pb2``) and return `out`."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={PROTO_DIR}",
         f"--python_out={out}", *PROTO_FILES],
        check=True,
        capture_output=True,
    )  # fmt: skip
    for package in ("identity", "shared"):
        (out / package / "__init__.py").touch()
    return out


def load(directory: Path | str) -> ModuleType:
    """Import ``FunctionRpc_pb2`` from a directory `compile_into` filled."""
    path = str(directory)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("FunctionRpc_pb2")
