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
# WorkerFunctionMetadataProvider.cs in Azure/azure-functions-host. Compiled on first use (re's
# cache), not at start-up.
_FUNCTION_NAME = r"^[a-z][a-z0-9_\-]{0,127}$"  # case-insensitive
_BINDING_NAME = r"^[a-zA-Z][a-zA-Z0-9]{0,127}$"
#: Namespace of the deterministic function ids `FunctionMetadata` derives from names.
FUNCTION_ID_NAMESPACE = uuid.UUID("3f0c6a4e-8d57-4b55-9a55-7c1f0b5e2a10")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding of a function, as the host describes it when it loads the function.

    The host sends these four fields and nothing more: the binding's `name`, its `type`
    (``httpTrigger``, ``queueTrigger``, ``timerTrigger``, ``queue``, ``http``, ...), its
    `direction` and its `data_type` (``dataType`` in ``function.json``). The rest of a
    binding (``queueName``, ``route``, ``methods``, ``schedule``, ``path``, ``connection``,
    keys of your own) never reaches the worker: read the function's ``function.json`` (in
    `FunctionInfo.directory`) for it, or, with worker indexing, `FunctionInfo.indexed`.
    """

    name: str
    type: str
    direction: Direction = "in"
    data_type: DataType = "undefined"

    @property
    def is_trigger(self) -> bool:
        """Whether this is the function's trigger (its type ends in ``Trigger``)."""
        return self.type.lower().endswith("trigger")

    @property
    def is_output(self) -> bool:
        """Whether the function may set this binding (direction ``out`` or ``inout``)."""
        return self.direction in ("out", "inout")


@dataclass(frozen=True)
class FunctionInfo:
    """A function the host asks the worker to load (`Worker.on_function_load`).

    With host indexing (the default) the host finds the functions itself: each folder of the
    app directory with a ``function.json`` is one. Then `name` is the folder's name,
    `directory` its path (``function.json`` is there), `script_file` the absolute
    path of the function's script (``scriptFile``, or the file the host picked) and
    `entry_point` its ``entryPoint`` ("" when absent). With worker indexing they are what
    `Worker.on_functions_metadata` returned, and `indexed` is that entry.

    `bindings` carry type, direction and data type only (`Binding`): the host sends no more,
    so read ``function.json`` (``Path(function.directory, "function.json")``) for
    ``queueName``, ``route``, ``schedule`` and your own keys. The app directory itself is
    `InitRequest.function_app_directory`, also the worker's working directory (the host
    starts the worker there).

    Attributes:
        function_id: the host's id of the function; invocations refer to it.
        name: the function's name.
        directory: the function's directory.
        script_file: the function's script.
        entry_point: the function's entry point, or "".
        bindings: the function's bindings by name.
        properties: host-side metadata as strings (``FunctionId``, what worker indexing
            returned, flags such as ``IsDisabled``); ignore keys you do not know.
        indexed: this function's entry from the worker's own index (worker indexing only).
    """

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
        """The bindings the function may set, by name."""
        return {name: b for name, b in self.bindings.items() if b.is_output}

    @classmethod
    def from_rpc(cls, function_id: str, metadata: "pb.RpcFunctionMetadata") -> "FunctionInfo":
        """The function of a `FunctionLoadRequest`'s metadata."""
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
    """W3C trace context of the host activity that caused an invocation (with
    ``workerkit[otel]`` also the current OpenTelemetry context of the invocation's hook).
    `baggage` is the host's OpenTelemetry baggage (empty from hosts that do not send it)."""

    trace_parent: str = ""
    trace_state: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    baggage: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


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

    `inputs` maps the names of the trigger and of the other input bindings to Python values
    (`workerkit.convert` has the table); `raw_inputs` keeps the host's `TypedData`
    unchanged, e.g. the exact JSON text. What the trigger brings, as the host sends it:

    - ``httpTrigger``: an `HttpRequest`.
    - ``timerTrigger``: a dict parsed from the host's JSON, e.g. ``{"Schedule":
      {"AdjustForDST": True}, "ScheduleStatus": {"Last": "...", "Next": "...",
      "LastUpdated": "..."}, "IsPastDue": False}``.
    - ``queueTrigger``: the message text as a `str` (`bytes` with ``dataType: binary``); a
      JSON message stays text: ``json.loads`` it.
    - other triggers: usually a `str`; `bytes` with ``dataType: binary``; a parsed JSON value
      when the extension sends an object (Event Grid); a list with ``cardinality: many``.

    `trigger_metadata` is the trigger's binding data by name, values converted like inputs
    (JSON parsed), keys with null values left out. For a queue: ``QueueTrigger`` (the
    message text), ``Id``, ``PopReceipt``, ``DequeueCount`` (an int), ``InsertionTime``,
    ``ExpirationTime``, ``NextVisibleTime`` (ISO 8601 strings). For HTTP: ``Query`` and
    ``Headers`` (dicts of strings), each query parameter but ``code`` and each route
    parameter (strings), and the top-level properties of a JSON object body; not the request
    itself, which is in `inputs`. A timer sends none. Extensions may add keys: read the ones
    you need with ``.get``.

    Attributes:
        invocation_id: the host's id of this call (also in `workerkit.current_invocation_id`
            while it runs).
        function: the function called, as it was loaded.
        inputs: input values by binding name.
        raw_inputs: the same inputs as the host's `TypedData`.
        trigger_metadata: the trigger's binding data by name.
        trace_context: the host's W3C trace context of this call.
        retry_context: which retry this is, when the function has a retry policy.
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
    """The host's `WorkerInitRequest` (`Worker.on_init`).

    Attributes:
        host_version: the Functions host's version.
        worker_directory: the directory of the worker (with ``worker.config.json``).
        function_app_directory: the function app's directory: the one with
            ``host.json`` and, with host indexing, a folder per function. The host starts
            the worker with it as working directory. After specialization
            `EnvironmentReload.function_app_directory` replaces it.
        capabilities: what the host offers, by name (values are strings).
        log_categories: category -> minimum level the host wants, as `RpcLog.Level`
            numbers (0 Trace, 1 Debug, 2 Information, 3 Warning, 4 Error, 5 Critical,
            6 None); workerkit applies it to forwarded logs. The Functions host sends none.
    """

    host_version: str
    worker_directory: str
    function_app_directory: str
    capabilities: Mapping[str, str]
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
    """The host asks the worker to list the app's functions (worker indexing).

    `function_app_directory` is the function app's directory, as in
    `InitRequest.function_app_directory`.
    """

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
        if not re.match(_FUNCTION_NAME, self.name, re.IGNORECASE) or self.name.lower() == "host":
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
            if not isinstance(name, str) or not (
                name == "$return" or re.match(_BINDING_NAME, name)
            ):
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
    """Specialization: the environment and app directory now in effect (already applied:
    ``os.environ`` holds `environment`, and `function_app_directory` is the working
    directory)."""

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
