"""Google's protobuf classes compiled from our proto/, for interop tests and a grpcio host."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import betterproto2
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message as PbMessage
from google.protobuf.message_factory import GetMessageClass

from workerkit._generated import AzureFunctionsRpcMessages as bp

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
PROTO_FILES = (
    "FunctionRpc.proto",
    "identity/ClaimsIdentityRpc.proto",
    "shared/NullableTypes.proto",
)
# Top-level import names the generated *_pb2 modules need (`from shared import ...`).
PB2_TOP_LEVEL = frozenset({"FunctionRpc_pb2", "identity", "shared"})
PACKAGE = "AzureFunctionsRpcMessages"


# --- protobuf modules compiled from proto/ ------------------------------------------------------


@dataclass(frozen=True)
class Pb2:
    rpc: ModuleType
    identity: ModuleType
    nullable: ModuleType

    def descriptor(self, name: str) -> Descriptor:
        return self.rpc.DESCRIPTOR.pool.FindMessageTypeByName(name)

    def cls(self, bp_cls: type[betterproto2.Message]) -> type[PbMessage]:
        """The protobuf class for a (top-level) betterproto2 message class."""
        package = PACKAGE + "." if bp_cls.__module__ == bp.__name__ else ""
        pb_cls: type[PbMessage] = GetMessageClass(self.descriptor(package + bp_cls.__name__))
        return pb_cls


def compile_pb2(tmp_path_factory: pytest.TempPathFactory) -> Pb2:
    out = tmp_path_factory.mktemp("pb2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={out}",
            *PROTO_FILES,
        ],
        check=True,
        capture_output=True,
    )
    # Regular packages, first on sys.path: they win over any other `identity`/`shared` around.
    for package in ("identity", "shared"):
        (out / package / "__init__.py").touch()
    # Import with a private sys.path/sys.modules state, then put the previous state back, so
    # that nothing else in the session sees (or clashes with) these generic top-level names.
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in PB2_TOP_LEVEL}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    try:
        modules = Pb2(
            rpc=importlib.import_module("FunctionRpc_pb2"),
            identity=importlib.import_module("identity.ClaimsIdentityRpc_pb2"),
            nullable=importlib.import_module("shared.NullableTypes_pb2"),
        )
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n.split(".")[0] in PB2_TOP_LEVEL]:
            del sys.modules[name]
        sys.modules.update(saved)
    for module in (modules.rpc, modules.identity, modules.nullable):
        assert Path(str(module.__file__)).is_relative_to(out)
    return modules
