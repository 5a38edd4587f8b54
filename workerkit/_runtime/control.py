"""Everything the host asks of a worker except invocations, as a state machine free of I/O.

`Control` takes the host's control messages (init, metadata, loads, environment reload,
warmup, status, terminate, frames that could not be read) and the
outcomes of the hooks it asked for, and answers each with a list of *effects*: a message to
send, a hook to run, a process-wide change to make, a shutdown. It never sends, awaits,
starts a thread or touches the process; `session.Session` carries out the effects and
reports each hook's outcome back with `hook_done`. So the ordering rules live here, tested
without a socket (tests/test_control.py):

- metadata, loads and environment reloads wait for init to be answered (or to be lost:
  an init frame that could not be read releases them too);
- invocations of a function wait while a load of it is under way (`Loading`/`Settled`);
- a restarted worker, which the host never asks for metadata, indexes itself once, on its
  first load of a worker-indexed function, and every load waiting for that index shares it;
- every request that expects a reply gets exactly one, a Failure when its hook raised;
- with HTTP streaming wanted (the worker's option, or the app setting in the environment at
  init or after a reload), the worker's HTTP server is opened (`OpenProxy`) before init or
  the reload is answered, which then reports its ``HttpUri``; once reported it stays (the
  host never stops proxying to a worker that reported it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .._types import (
    EnvironmentReload,
    FunctionInfo,
    FunctionMetadata,
    InitRequest,
    InitResult,
    MetadataRequest,
    Warmup,
)
from .._wire import schema
from .._wire.messages import (
    function_load_response,
    function_metadata_response,
    status_result,
    worker_init_response,
)
from .._wire.pb import pb
from ..errors import SUCCESS, error_details, failure, success
from .protocol import Catalog
from .replies import (
    CAPABILITIES,
    HTTP_PROXY_CAPABILITIES,
    WORKER_INDEXED,
    answer_unreadable,
    check_strings,
    hook_status,
    machine,
    rpc_metadata,
)

if TYPE_CHECKING:
    from ..worker import Worker
    from .transport import Unreadable

__all__ = [
    "DEFAULT_TERMINATE_GRACE",
    "Call",
    "Control",
    "Effect",
    "Loading",
    "LogLevels",
    "OpenProxy",
    "Send",
    "Settled",
    "Stop",
]

log = logging.getLogger("workerkit")

#: Seconds to drain when the host's WorkerTerminate names no grace period.
DEFAULT_TERMINATE_GRACE = 5.0


# -- effects: what the runtime is asked to do, in order ----------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` (encoded, or a generated message) to the host; `request_id` is the
    request it answers."""

    request_id: str
    message: bytes | pb.StreamingMessage


@dataclass(frozen=True, slots=True)
class Call:
    """Run hook `hook` with `arg` and report what it returned or raised with
    `Control.hook_done(token, ...)`. With `environment`/`directory` (an environment
    reload), first replace the process environment (when not empty) and change to the
    directory (when not empty); an error there is reported as the hook's."""

    token: int
    hook: str
    arg: Any
    environment: Mapping[str, str] | None = None
    directory: str = ""


@dataclass(frozen=True, slots=True)
class LogLevels:
    """Apply the host's log categories (category -> minimum `RpcLog.Level`)."""

    categories: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Loading:
    """A load of `function_id` began: its invocations wait for `Settled`."""

    function_id: str


@dataclass(frozen=True, slots=True)
class Settled:
    """No load of `function_id` is under way any more: its invocations may run."""

    function_id: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop taking work and drain within `grace` seconds, then end the stream."""

    reason: str
    grace: float


@dataclass(frozen=True, slots=True)
class OpenProxy:
    """Open the worker's HTTP server for the host's proxy (HTTP streaming) and report its
    URI, or the exception it failed with, with `Control.hook_done(token, ...)`."""

    token: int


Effect = Send | Call | LogLevels | Loading | Settled | Stop | OpenProxy
#: What to do once a hook ended: ok (False: it raised), and its value or exception.
Then = Callable[[bool, Any], list[Effect]]
#: A load's end, for whoever asked for it: the exception it failed with, or None.
LoadDone = Callable[[BaseException | None], list[Effect]]


class Control:
    """The control conversation of one session with the host."""

    def __init__(
        self,
        worker: Worker,
        app_directory: Callable[[], str],
        http_streaming: Callable[[], bool] = lambda: False,
        telemetry: Callable[[], Mapping[str, str]] = dict,
        shared_memory: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        """`app_directory`: the function app's root, where a restarted worker indexes
        itself (the host starts workers there: the session passes `os.getcwd`).
        `http_streaming`: whether HTTP streaming is wanted now (asked at init and after an
        environment reload, once the environment is the host's); `telemetry`, likewise, the
        capabilities OpenTelemetry adds (tracing.py; once reported they stay, as at the host);
        `shared_memory`, likewise, those of shared-memory data transfer (sharedmem.py)."""
        self.worker = worker
        self._http_streaming, self._telemetry = http_streaming, telemetry
        self._shared_memory = shared_memory
        #: The capabilities the host's init request gave (``FunctionDataCache``, ...).
        self.host_capabilities: Mapping[str, str] = {}
        #: The worker's HTTP server for the host's proxy, once open and reported.
        self.http_uri: str | None = None
        self._overridden = type(worker)._overridden_hooks
        self._app_directory = app_directory
        self.catalog = Catalog()
        self.capabilities: dict[str, str] = dict(CAPABILITIES)
        self.initialized = False
        self._init_result = InitResult()
        self._index: dict[str, FunctionMetadata] | None = None
        #: Requests that wait for init (thunks run once it is answered).
        self._after_init: list[Callable[[], list[Effect]]] = []
        #: Loads waiting for the index a restarted worker builds; None: none is being built.
        self._after_index: list[tuple[FunctionInfo, LoadDone]] | None = None
        self._loading: dict[str, int] = {}  # function id -> loads under way
        self._calls: dict[int, Then] = {}
        self._next_token = 0
        self._handlers: dict[str, Callable[[str, Any], list[Effect]]] = {
            "worker_init_request": self._init,
            "functions_metadata_request": self._metadata,
            "function_load_request": self._load_one,
            "function_load_request_collection": self._load_collection,
            "worker_status_request": self._status,
            "worker_terminate": self._terminate,
            "function_environment_reload_request": self._environment_reload,
            "worker_warmup_request": self._warmup,
            "file_change_event_request": self._file_change,
        }

    # -- in ----------------------------------------------------------------------------------
    def handles(self, kind: str) -> bool:
        """Whether `kind` (a `StreamingMessage.content` member) is one of this machine's."""
        return kind in self._handlers

    def receive(self, kind: str, request_id: str, body: Any) -> list[Effect]:
        """A message of `kind` from the host (its content `body`)."""
        return self._handlers[kind](request_id, body)

    def hook_done(self, token: int, ok: bool, value: Any) -> list[Effect]:
        """The hook of `Call` `token` returned `value` (ok) or raised `value`."""
        return self._calls.pop(token)(ok, value)

    def unreadable(self, frame: Unreadable) -> list[Effect]:
        """A frame that could not be decoded: a request in it still gets its one reply, a
        Failure saying why (the host then fails what it asked for, not waits for it)."""
        reason, reply = answer_unreadable(frame)
        log.error("%s", reason)
        effects: list[Effect] = []
        if reply is not None:
            message = pb.StreamingMessage(request_id=frame.request_id, **reply)
            effects.append(Send(frame.request_id, message))
        kind = frame.content
        if kind == schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST and frame.function_id:
            self.catalog.failed(frame.function_id, reason)  # its invocations fail with it
        elif kind == schema.STREAMING_MESSAGE_WORKER_INIT_REQUEST:
            effects += self._initialized()  # nothing waits for an init that will not come
        elif kind == schema.STREAMING_MESSAGE_WORKER_TERMINATE:
            # the host wants us gone, whatever else the frame said
            effects.append(Stop("the host sent WorkerTerminate", DEFAULT_TERMINATE_GRACE))
        return effects

    @property
    def waiting(self) -> int:
        """Hooks asked for and not reported back yet."""
        return len(self._calls)

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, hook: str, arg: Any, then: Then, **extra: Any) -> Call:
        self._next_token += 1
        self._calls[self._next_token] = then
        return Call(self._next_token, hook, arg, **extra)

    def _when_initialized(self, thunk: Callable[[], list[Effect]]) -> list[Effect]:
        if self.initialized:
            return thunk()
        self._after_init.append(thunk)
        return []

    def _initialized(self) -> list[Effect]:
        self.initialized = True
        effects: list[Effect] = []
        waiting, self._after_init = self._after_init, []
        for thunk in waiting:
            effects += thunk()
        return effects

    # -- handshake ---------------------------------------------------------------------------
    def _init(self, request_id: str, request: InitRequest) -> list[Effect]:
        def answer(error: BaseException | None) -> list[Effect]:
            return [Send(request_id, self._init_response(request_id, error)), *self._initialized()]

        def then(ok: bool, value: Any) -> list[Effect]:
            error = None if ok else value
            if ok and value is not None:
                try:
                    self._accept_init_result(value)
                except Exception as exc:
                    error = exc
            if error is not None:
                log.error("on_init failed: %s", error, exc_info=error)
                return answer(error)
            return self._with_proxy(answer)

        self.host_capabilities = request.capabilities
        return [LogLevels(request.log_categories), self._call("on_init", request, then)]

    def _with_proxy(self, answer: Callable[[BaseException | None], list[Effect]]) -> list[Effect]:
        """`answer` once the HTTP server is open, when streaming is wanted (with the error
        it failed with, if it did), else at once."""
        try:
            self.capabilities.update(self._telemetry())
            for key, value in self._shared_memory().items():  # unless on_init chose
                self.capabilities.setdefault(key, value)
            wanted = self._http_streaming()
        except Exception as exc:
            return answer(exc)
        if self.http_uri is not None and not wanted:
            log.warning(
                "HTTP streaming is off now, but the host keeps proxying HTTP requests to a"
                " worker once it reported HttpUri: it stays on until the worker restarts"
            )
        if self.http_uri is not None or not wanted:
            return answer(None)

        def opened(ok: bool, value: Any) -> list[Effect]:
            if not ok:
                log.error("HTTP streaming: the worker's HTTP server did not start: %s", value)
                return answer(value)
            self.http_uri = value
            self.capabilities.update(HTTP_PROXY_CAPABILITIES, HttpUri=value)
            log.info("HTTP streaming on: the host forwards HTTP requests to %s", value)
            return answer(None)

        self._next_token += 1
        self._calls[self._next_token] = opened
        return [OpenProxy(self._next_token)]

    def _accept_init_result(self, result: Any) -> None:
        if not isinstance(result, InitResult):
            raise TypeError(f"on_init must return InitResult or None, not {result!r}")
        check_strings(result.capabilities, "InitResult.capabilities")
        check_strings(result.custom_properties, "InitResult.custom_properties")
        for name in ("runtime_name", "runtime_version", "worker_version"):
            value = getattr(result, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"InitResult.{name} must be a str or None: {value!r}")
        self._init_result = result
        self.capabilities.update(result.capabilities)

    def _init_response(self, request_id: str, error: BaseException | None) -> bytes:
        try:
            metadata = self.worker_metadata()
            return worker_init_response(
                request_id,
                capabilities=self.capabilities,
                result=hook_status(error, "on_init"),
                **metadata,
            )
        except Exception as exc:  # e.g. a class attribute of the wrong type: still answer
            log.error("cannot describe this worker to the host: %s", exc, exc_info=True)
            return worker_init_response(
                request_id,
                worker_version="",
                capabilities={},
                result=hook_status(exc, "WorkerInitResponse"),
                runtime_name="",
                runtime_version="",
                worker_bitness="",
                custom_properties={},
            )

    def worker_metadata(self) -> dict[str, Any]:
        """`WorkerMetadata`'s fields: the init result's, else the worker class's; raises
        TypeError when one of them is not a str."""
        result, worker = self._init_result, self.worker
        fields = {
            "runtime_name": result.runtime_name or worker.runtime_name,
            "runtime_version": result.runtime_version or worker.runtime_version,
            "worker_version": result.worker_version or worker.worker_version,
        }
        for name, value in fields.items():
            if not isinstance(value, str):
                raise TypeError(f"{type(worker).__qualname__}.{name} must be a str: {value!r}")
        return {
            **fields,
            "worker_bitness": machine(),
            "custom_properties": dict(result.custom_properties),
        }

    # -- indexing ----------------------------------------------------------------------------
    def _metadata(self, request_id: str, request: MetadataRequest) -> list[Effect]:
        directory = request.function_app_directory

        def then(ok: bool, value: Any) -> list[Effect]:
            try:
                if not ok:
                    raise value
                found = self._accept_index(value)
                results = [] if found is None else [rpc_metadata(e, directory) for e in found]
                response = function_metadata_response(
                    request_id, results, status_result(SUCCESS), use_default_indexing=found is None
                )
            except BaseException as exc:
                log.error("on_functions_metadata failed: %s", exc, exc_info=exc)
                response = function_metadata_response(
                    request_id, [], hook_status(exc, "on_functions_metadata")
                )
            return [Send(request_id, response)]

        return self._when_initialized(
            lambda: [self._call("on_functions_metadata", MetadataRequest(directory), then)]
        )

    def _accept_index(self, found: Any) -> list[FunctionMetadata] | None:
        """What `on_functions_metadata` returned, checked and kept as the index."""
        if found is None:
            return None
        index: dict[str, FunctionMetadata] = {}
        for entry in found:
            if not isinstance(entry, FunctionMetadata):
                raise TypeError(
                    f"on_functions_metadata must return FunctionMetadata items, not {entry!r}"
                )
            index[entry.function_id] = entry
        self._index = index
        return list(index.values())

    # -- loading -----------------------------------------------------------------------------
    def _load_one(self, request_id: str, info: FunctionInfo) -> list[Effect]:
        def done(error: BaseException | None) -> list[Effect]:
            status = hook_status(error, "on_function_load")
            return [Send(request_id, function_load_response(request_id, info.function_id, status))]

        return self._load(info, done)

    def _load_collection(
        self, request_id: str, request: pb.FunctionLoadRequestCollection
    ) -> list[Effect]:
        requests = request.function_load_requests
        statuses: list[pb.StatusResult | None] = [None] * len(requests)
        left = len(requests)

        def settle(position: int, status: pb.StatusResult) -> list[Effect]:
            nonlocal left
            statuses[position] = status
            left -= 1
            if left:
                return []
            collection = pb.FunctionLoadResponseCollection(
                function_load_responses=[
                    pb.FunctionLoadResponse(function_id=one.function_id, result=status)
                    for one, status in zip(requests, statuses, strict=True)
                ]
            )
            message = pb.StreamingMessage(
                request_id=request_id, function_load_response_collection=collection
            )
            return [Send(request_id, message)]

        def finisher(position: int) -> LoadDone:
            def done(error: BaseException | None) -> list[Effect]:
                if error is None:
                    return settle(position, success())
                return settle(position, failure(error, user=True, source="on_function_load"))

            return done

        effects: list[Effect] = []
        for position, one in enumerate(requests):
            try:
                info = FunctionInfo.from_rpc(
                    one.function_id, one.metadata or pb.RpcFunctionMetadata()
                )
            except Exception as exc:  # a request we cannot read costs only its function
                log.error("function %s cannot be loaded: %s", one.function_id, exc)
                effects += settle(
                    position, failure(f"the FunctionLoadRequest could not be read: {exc}")
                )
            else:
                effects += self._load(info, finisher(position))
        if not requests:  # nothing to wait for
            message = pb.StreamingMessage(
                request_id=request_id,
                function_load_response_collection=pb.FunctionLoadResponseCollection(),
            )
            effects.append(Send(request_id, message))
        return effects

    def _load(self, info: FunctionInfo, done: LoadDone) -> list[Effect]:
        """Load one function once init is answered; `done` gets how it ended."""
        function_id = info.function_id
        self._loading[function_id] = self._loading.get(function_id, 0) + 1
        return [Loading(function_id), *self._when_initialized(lambda: self._start_load(info, done))]

    def _start_load(self, info: FunctionInfo, done: LoadDone) -> list[Effect]:
        if not info.function_id:
            return self._loaded(
                info, ValueError("the FunctionLoadRequest has no function_id"), done
            )
        if (
            "on_functions_metadata" in self._overridden
            and self._index is None
            and info.properties.get(WORKER_INDEXED)
        ):
            # A restarted worker: the host never asks it for metadata, so it indexes
            # itself now, once, for every load that arrives meanwhile.
            if self._after_index is not None:
                self._after_index.append((info, done))
                return []
            self._after_index = [(info, done)]
            request = MetadataRequest(self._app_directory())
            return [self._call("on_functions_metadata", request, self._indexed)]
        return self._run_load(info, done)

    def _indexed(self, ok: bool, value: Any) -> list[Effect]:
        waiting, self._after_index = self._after_index or [], None
        error: BaseException | None = None if ok else value
        if ok:
            try:
                self._accept_index(value)
            except Exception as exc:
                error = exc
        effects: list[Effect] = []
        for info, done in waiting:
            effects += self._loaded(info, error, done) if error else self._run_load(info, done)
        return effects

    def _run_load(self, info: FunctionInfo, done: LoadDone) -> list[Effect]:
        entry = (self._index or {}).get(info.function_id)
        if entry is not None:
            info = replace(info, indexed=entry)
        return [
            self._call(
                "on_function_load",
                info,
                lambda ok, value: self._loaded(info, None if ok else value, done),
            )
        ]

    def _loaded(
        self, info: FunctionInfo, error: BaseException | None, done: LoadDone
    ) -> list[Effect]:
        function_id = info.function_id
        if error is None:
            self.catalog.loaded(info)
        else:
            log.error("function %s failed to load: %s", function_id, error)
            self.catalog.failed(function_id, error_details(error).message)
        effects = done(error)
        left = self._loading[function_id] - 1
        if left:
            self._loading[function_id] = left
        else:
            del self._loading[function_id]
            effects.append(Settled(function_id))
        return effects

    # -- the rest ----------------------------------------------------------------------------
    def _environment_reload(
        self, request_id: str, request: pb.FunctionEnvironmentReloadRequest
    ) -> list[Effect]:
        environment = dict(request.environment_variables)
        directory = request.function_app_directory

        def then(ok: bool, value: Any) -> list[Effect]:
            if not ok:
                log.error("environment reload failed: %s", value, exc_info=value)
                return answer(failure(value, user=True, source="on_environment_reload"))
            return self._with_proxy(
                lambda error: answer(
                    success() if error is None else failure(error, source="HttpUri")
                )
            )

        def answer(status: pb.StatusResult) -> list[Effect]:
            metadata = None
            try:
                metadata = pb.WorkerMetadata(**self.worker_metadata())
            except Exception as exc:  # still answer, without the metadata
                log.error("cannot describe this worker to the host: %s", exc, exc_info=True)
                status = failure(exc, source="FunctionEnvironmentReloadResponse")
            response = pb.FunctionEnvironmentReloadResponse(
                worker_metadata=metadata, capabilities=dict(self.capabilities), result=status
            )
            message = pb.StreamingMessage(
                request_id=request_id, function_environment_reload_response=response
            )
            return [Send(request_id, message)]

        def start() -> list[Effect]:
            arg = EnvironmentReload(environment, directory)
            call = self._call(
                "on_environment_reload", arg, then, environment=environment, directory=directory
            )
            return [call]

        return self._when_initialized(start)

    def _warmup(self, request_id: str, request: pb.WorkerWarmupRequest) -> list[Effect]:
        def then(ok: bool, value: Any) -> list[Effect]:
            status = success() if ok else failure(value, user=True, source="on_warmup")
            message = pb.StreamingMessage(
                request_id=request_id, worker_warmup_response=pb.WorkerWarmupResponse(status)
            )
            return [Send(request_id, message)]

        return [self._call("on_warmup", Warmup(request.worker_directory), then)]

    def _status(self, request_id: str, request: pb.WorkerStatusRequest) -> list[Effect]:
        message = pb.StreamingMessage(
            request_id=request_id, worker_status_response=pb.WorkerStatusResponse()
        )
        return [Send(request_id, message)]

    def _terminate(self, request_id: str, request: pb.WorkerTerminate) -> list[Effect]:
        grace = request.grace_period
        seconds = grace.total_seconds() if grace is not None else DEFAULT_TERMINATE_GRACE
        return [Stop("the host sent WorkerTerminate", seconds)]

    def _file_change(self, request_id: str, request: pb.FileChangeEventRequest) -> list[Effect]:
        log.info("file change reported by the host: %s %s", request.type, request.full_path)
        return []
