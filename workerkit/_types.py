"""The typed objects hooks receive and return. None of them touches the stream."""

import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._generated import AzureFunctionsRpcMessages as pb
    from ._generated.AzureFunctionsRpcMessages import TypedData
else:
    # The generated classes are imported on first use (`workerkit._wire.pb`), not for an
    # annotation: at run time `Invocation.raw_inputs` is annotated with Any values.
    TypedData = Any

__all__ = [
    "Binding",
    "EnvironmentReload",
    "FunctionInfo",
    "FunctionMetadata",
    "InitRequest",
    "InitResult",
    "Invocation",
    "InvocationResult",
    "MetadataRequest",
    "RetryContext",
    "Shutdown",
    "TraceContext",
    "Warmup",
]

Direction = Literal["in", "out", "inout"]
DataType = Literal["undefined", "string", "binary", "stream"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DIRECTIONS: dict[int, Direction] = {0: "in", 1: "out", 2: "inout"}
_DATA_TYPES: dict[int, DataType] = {0: "undefined", 1: "string", 2: "binary", 3: "stream"}
# Names the host accepts: a function's starts with a letter, then letters, digits, '_' or '-';
# a binding's is letters and digits only, or "$return"; 128 characters at most. The host's
# checks: src/WebJobs.Script/Utility.cs and src/WebJobs.Script/Host/
# WorkerFunctionMetadataProvider.cs in Azure/azure-functions-host.
_FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,127}$", re.IGNORECASE)
_BINDING_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9]{0,127}$")
#: Namespace of the deterministic function ids `FunctionMetadata` derives from names.
FUNCTION_ID_NAMESPACE = uuid.UUID("3f0c6a4e-8d57-4b55-9a55-7c1f0b5e2a10")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding of a function, as the host described it in the load request."""

    name: str
    type: str
    direction: Direction = "in"
    data_type: DataType = "undefined"

    @property
    def is_trigger(self) -> bool:
        return self.type.lower().endswith("trigger")

    @property
    def is_output(self) -> bool:
        return self.direction in ("out", "inout")


@dataclass(frozen=True)
class FunctionInfo:
    """A function the host asks the worker to load (`Worker.on_function_load`)."""

    function_id: str
    name: str
    directory: str = ""
    script_file: str = ""
    entry_point: str = ""
    bindings: Mapping[str, Binding] = field(default_factory=lambda: _EMPTY)
    #: Host-side metadata as strings, including what worker indexing returned.
    properties: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: This function's entry from the worker's own index (worker indexing only).
    indexed: "FunctionMetadata | None" = None

    @property
    def trigger(self) -> Binding | None:
        """The trigger binding, if the host named one."""
        return next((b for b in self.bindings.values() if b.is_trigger), None)

    @property
    def output_bindings(self) -> Mapping[str, Binding]:
        return {name: b for name, b in self.bindings.items() if b.is_output}

    @classmethod
    def from_rpc(cls, function_id: str, metadata: "pb.RpcFunctionMetadata") -> "FunctionInfo":
        bindings = {
            name: Binding(
                name=name,
                type=info.type,
                direction=_DIRECTIONS.get(int(info.direction), "in"),
                data_type=_DATA_TYPES.get(int(info.data_type), "undefined"),
            )
            for name, info in metadata.bindings.items()
        }
        return cls(
            function_id=function_id,
            name=metadata.name,
            directory=metadata.directory,
            script_file=metadata.script_file,
            entry_point=metadata.entry_point,
            bindings=MappingProxyType(bindings),
            properties=_frozen(metadata.properties),
        )


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context of the host activity that caused an invocation."""

    trace_parent: str = ""
    trace_state: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class RetryContext:
    """Present when the function has a retry policy: which attempt this is."""

    retry_count: int
    max_retry_count: int
    #: Message of the failure that caused the retry ("" when the host gave none).
    exception_message: str = ""


@dataclass(frozen=True, eq=False)
class Invocation:
    """One call of a function (`Worker.on_invocation`).

    `inputs` maps binding names to Python values (see `workerkit.convert` for the mapping);
    `raw_inputs` keeps the host's `TypedData` unchanged, e.g. the exact JSON text.
    """

    invocation_id: str
    function: FunctionInfo
    inputs: Mapping[str, Any]
    raw_inputs: Mapping[str, TypedData]
    trigger_metadata: Mapping[str, Any]
    trace_context: TraceContext = field(default_factory=TraceContext)
    retry_context: RetryContext | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the host cancelled this invocation; sync hooks poll it to stop early."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to `timeout` seconds for a cancel (a sleep that wakes on cancel)."""
        return self._cancel.wait(timeout)


@dataclass(frozen=True)
class InvocationResult:
    """What `on_invocation` may return to set named outputs as well as the return value.

    Returning any other value is shorthand for ``InvocationResult(return_value=value)``.
    An ``outputs`` entry named ``$return`` is the return value.
    """

    return_value: Any = None
    outputs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class InitRequest:
    """The host's `WorkerInitRequest` (`Worker.on_init`)."""

    host_version: str
    worker_directory: str
    function_app_directory: str
    capabilities: Mapping[str, str]
    #: Category -> minimum level the host wants, as `RpcLog.Level` numbers (0 Trace,
    #: 1 Debug, 2 Information, 3 Warning, 4 Error, 5 Critical, 6 None); workerkit applies
    #: it to forwarded logs.
    log_categories: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class InitResult:
    """Optional answer of `Worker.on_init`: extra capabilities and worker metadata.

    A value left as None falls back to the `Worker` class attribute of the same name.
    """

    capabilities: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    runtime_name: str | None = None
    runtime_version: str | None = None
    worker_version: str | None = None
    custom_properties: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    """The host asks the worker to list the app's functions (worker indexing)."""

    function_app_directory: str


@dataclass(frozen=True)
class FunctionMetadata:
    """One function found by worker indexing (`Worker.on_functions_metadata`).

    `bindings` are `function.json`-style objects, e.g.
    ``{"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]}``.
    The function id is derived from the name, so restarted workers, which the host never
    asks for metadata again, load the same ids.
    """

    name: str
    script_file: str
    bindings: Sequence[Mapping[str, Any]]
    entry_point: str = ""
    directory: str = ""
    properties: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def function_id(self) -> str:
        return str(uuid.uuid5(FUNCTION_ID_NAMESPACE, self.name.lower()))

    def problems(self) -> list[str]:
        """What the host would reject in this metadata (empty when valid)."""
        found: list[str] = []
        if not _FUNCTION_NAME.match(self.name) or self.name.lower() == "host":
            found.append(
                f"function name {self.name!r} must match [a-zA-Z][a-zA-Z0-9_-]{{0,127}}"
                " and not be 'host'"
            )
        if not self.script_file:
            found.append("script_file must not be empty")
        seen: set[str] = set()
        triggers = 0
        for binding in self.bindings:
            name = binding.get("name")
            kind = binding.get("type")
            direction = binding.get("direction")
            if not isinstance(name, str) or not (name == "$return" or _BINDING_NAME.match(name)):
                found.append(f"binding name {name!r} must be alphanumeric (no '_') or '$return'")
            elif name.lower() in seen:
                found.append(f"binding name {name!r} is used twice")
            else:
                seen.add(name.lower())
            if not isinstance(kind, str) or not kind:
                found.append(f"binding {name!r} has no 'type'")
            elif kind.lower().endswith("trigger"):
                triggers += 1
            if direction not in ("in", "out", "inout"):
                found.append(f"binding {name!r} direction must be 'in', 'out' or 'inout'")
            elif name == "$return" and direction != "out":
                found.append("binding '$return' must have direction 'out'")
        if triggers != 1:
            found.append(f"a function needs exactly one trigger binding, found {triggers}")
        return found


@dataclass(frozen=True, slots=True)
class EnvironmentReload:
    """Specialization: the environment and app directory now in effect (already applied)."""

    environment: Mapping[str, str]
    function_app_directory: str


@dataclass(frozen=True, slots=True)
class Warmup:
    """The host warms a placeholder worker up before specialization."""

    worker_directory: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The worker is stopping; `grace_period` seconds remain in total."""

    grace_period: float
    reason: str
