"""The protocol state machine: a message from the host in, exactly one reply out.

The reader hands every message to `Session.dispatch` on the event loop. Control messages
(status, cancel, terminate) are answered there and then, so they never wait behind user
code; anything that runs a hook becomes its own task. Hooks go through `Session.call`, which
awaits ``async def`` hooks and runs plain ones in the thread pool with the caller's context.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .._types import (
    EnvironmentReload,
    FunctionInfo,
    FunctionMetadata,
    InitRequest,
    InitResult,
    Invocation,
    InvocationResult,
    MetadataRequest,
    RetryContext,
    Shutdown,
    TraceContext,
    Warmup,
)
from .._wire.fastwire import (
    HostRequest,
    LazyValues,
    RawInvocation,
    decode_value,
    encode_chunks,
    function_load_response,
    function_metadata_response,
    invocation_response,
    read_trace,
    rpc_function_metadata,
    start_stream,
    status_result,
    typed_data,
    worker_init_response,
)
from .._wire.pb import pb
from ..cli import HostArgs
from ..convert import ConversionError, HttpResponse
from ..errors import (
    FAILURE,
    SUCCESS,
    InvocationCancelled,
    MessageTooLarge,
    cancelled,
    error_details,
    failure,
    success,
)
from ..worker import HOOKS, Worker, ready_options
from .logs import LogRoute, current_invocation_id, current_route
from .logs import handler as log_handler
from .transport import Transport, Unreadable
from .watchdog import LoopWatchdog

if TYPE_CHECKING:
    from .._generated.AzureFunctionsRpcMessages import StreamingMessage as Message

log = logging.getLogger("workerkit")

#: What workerkit implements, advertised on every init (HOST_PROTOCOL §4.2). Not advertised:
#: SupportsLoadResponseCollection (the host's handling is broken for N > 1), shared memory
#: and HttpUri (not implemented).
CAPABILITIES: Mapping[str, str] = {
    "RpcHttpBodyOnly": "true",
    "RawHttpBodyBytes": "true",
    "RpcHttpTriggerMetadataRemoved": "true",
    "UseNullableValueDictionaryForHttp": "true",
    "TypedDataCollection": "true",
    "IncludeEmptyEntriesInMessagePayload": "true",
    "WorkerStatus": "true",
    "HandlesWorkerTerminateMessage": "true",
    "HandlesInvocationCancelMessage": "true",
    "HandlesWorkerWarmupMessage": "true",
    "EnableUserCodeException": "true",
}
DEFAULT_TERMINATE_GRACE = 5.0
#: The exit status by which a worker asks the host for a fresh process, not counted as a
#: crash (the host's WorkerProcess `OnProcessExited`: IntentionalRestartExitCode).
RESTART_EXIT_CODE = 200
#: Seconds a cancelled ``async def`` invocation gets to end before it is answered Cancelled
#: anyway. A coroutine that honours cancellation ends within a step or two; one still running
#: after this swallowed the CancelledError (or cleans up slowly), and the host must not wait
#: on it: the host restarts a worker whose cancelled invocation is unanswered 2 s on.
CANCEL_GRACE = 0.25
#: Property the worker puts on indexed functions; the host echoes it on every load.
WORKER_INDEXED = "worker_indexed"


@dataclass(eq=False)
class _Running:
    """An invocation between its request and its response."""

    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    #: The task has begun: cancelling it now raises inside `_invoke`'s handlers. (A task
    #: cancelled before its first step would end without running them, and without a reply.)
    started: bool = False
    invocation: Invocation | None = None
    invocation_id: str = ""
    request_id: str = ""
    #: Its one response has been sent, or is being sent: nothing else may be sent for it.
    answered: bool = False
    #: Answers Cancelled once `CANCEL_GRACE` has passed after a cancel (`_cancel_overdue`).
    overdue: asyncio.TimerHandle | None = None


class Session:
    """One worker process's conversation with the host."""

    def __init__(self, worker: Worker, args: HostArgs) -> None:
        self.options = ready_options(worker)  # first: a worker that cannot serve says why
        self.worker = worker
        self.args = args
        self.exit_code = 1
        self._closed = False
        cls = type(worker)
        self._async_hooks = cls._async_hooks
        self._overridden = {n for n in HOOKS if getattr(cls, n) is not getattr(Worker, n)}
        self._functions: dict[str, FunctionInfo] = {}
        self._load_errors: dict[str, str] = {}
        self._loading: dict[str, asyncio.Event] = {}
        self._index: dict[str, FunctionMetadata] | None = None
        self._index_lock = asyncio.Lock()
        self._running: dict[str, _Running] = {}
        self._invocations: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._capabilities: dict[str, str] = dict(CAPABILITIES)
        self._init_result = InitResult()
        self._initialized = asyncio.Event()
        self._stop = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None
        self._shutdown_code = 0
        self._terminating = False
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="workerkit-hook")
        self._slots = asyncio.Semaphore(self.options.max_in_flight)
        self._backlog = self.options.max_in_flight + self.options.max_queued
        self._loop = asyncio.get_running_loop()
        self._handlers: dict[str, Callable[[str, Any], None]] = {
            "worker_init_request": self._spawner(self._init),
            "functions_metadata_request": self._spawner(self._metadata),
            "function_load_request": self._spawner(self._load_one),
            "function_load_request_collection": self._spawner(self._load_collection),
            "invocation_cancel": self._invocation_cancel,
            "worker_status_request": self._status,
            "worker_terminate": self._terminate,
            "function_environment_reload_request": self._spawner(self._environment_reload),
            "worker_warmup_request": self._spawner(self._warmup),
            "close_shared_memory_resources_request": self._spawner(self._close_shared_memory),
            "file_change_event_request": self._file_change,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        self.transport = Transport(self.args, queue_size=self.options.send_queue)
        self._log_route = LogRoute(self.transport.offer_log)
        if log.level == logging.NOTSET:  # our own logger; the root logger is left alone
            log.setLevel(logging.INFO)
        # This task's context, and so every task and pool thread of this session, logs
        # to this session's stream (reset below: `run` may be awaited in a caller's context).
        route_token = current_route.set(self._log_route)
        reason = "cancelled"
        watchdog = None
        try:
            self.worker._restart = self._restart_from_any_thread
            log_handler.attach(self._log_route)
            if self.options.loop_block_warning > 0:
                watchdog = LoopWatchdog(self._loop, self.options.loop_block_warning, self._describe)
                watchdog.start()
            first = start_stream(self.args.request_id, self.args.worker_id)
            reason = await self.transport.run(first, self.dispatch, self._replace, self._stop)
        finally:
            if watchdog is not None:
                watchdog.stop()
            self._closed = True
            self.worker._restart = None
            self._log_route.sink = None  # from now on its records go to stderr
            try:
                if self.exit_code not in (0, RESTART_EXIT_CODE):
                    log.error("worker stopping: %s", reason)
                await self._abandon()
            finally:  # even when cancelled again while abandoning
                self._pool.shutdown(wait=False, cancel_futures=True)
                log_handler.detach(self._log_route)
                current_route.reset(route_token)
        return self.exit_code

    def _describe(self, task: asyncio.Task[Any] | None) -> tuple[str, str]:
        """Who is running in `task` (the function and invocation, when it is one), and what
        the author can do about it."""
        advice = (
            "an async def hook must not block; use a plain def hook or asyncio.to_thread for"
            " blocking work"
        )
        for invocation_id, running in list(self._running.items()):
            if running.task is task and running.invocation is not None:
                name = running.invocation.function.name
                if "on_invocation" not in self._async_hooks:
                    advice = (
                        "its hook is a plain def, which runs in the thread pool, so the time"
                        " went to reading its input data (a very large payload?) or to a"
                        " coroutine the hook returned (e.g. from a decorator), which must not"
                        " block"
                    )
                return f"function {name!r} (invocation {invocation_id})", advice
        who = f"task {task.get_name()!r}" if task is not None else "code outside any task"
        return who, advice

    def request_shutdown(self, reason: str, grace: float | None = None, exit_code: int = 0) -> None:
        """Stop taking work, drain within `grace` seconds, then end the stream and exit with
        `exit_code`."""
        if self._shutdown is None:
            self._terminating = True
            self._shutdown_code = exit_code
            limit = self.options.shutdown_grace if grace is None else grace
            self._shutdown = self._spawn(self._drain_and_stop(reason, limit))

    def _restart_from_any_thread(self, reason: str) -> None:
        """`Worker.request_restart`: drain, then exit so that the host starts a new worker."""

        def restart() -> None:
            log.error("restart requested: %s", reason)
            self.request_shutdown(f"restart requested: {reason}", exit_code=RESTART_EXIT_CODE)

        try:
            self._loop.call_soon_threadsafe(restart)
        except RuntimeError:
            pass  # the loop is closed: the worker is exiting already

    async def _drain_and_stop(self, reason: str, grace: float) -> None:
        log.info("shutting down (%s), %d invocations in flight", reason, len(self._invocations))
        deadline = self._loop.time() + grace
        # Keep a margin of the grace period for cancelling, on_shutdown and flushing.
        budget = max(grace * 0.6, grace - 2.0, 0.0)
        owing = self._owing()
        if owing:
            _, pending = await asyncio.wait(owing, timeout=budget)
            for running in list(self._running.values()):
                self._cancel(running)
            pending &= self._owing()
            if pending:
                await asyncio.wait(pending, timeout=max(deadline - self._loop.time() - 1.0, 0.1))
            for running in list(self._running.values()):
                self._cancel_overdue(running)  # what would not stop: answered before the end
        if "on_shutdown" in self._overridden:
            remaining = max(deadline - self._loop.time() - 0.5, 0.1)
            try:
                await asyncio.wait_for(
                    self.call("on_shutdown", Shutdown(remaining, reason)), remaining
                )
            except Exception as exc:
                log.error("on_shutdown failed: %s", exc, exc_info=True)
        self.exit_code = self._shutdown_code
        # Ending the call (flush, our end, the host's end) gets what is left, at least 1 s.
        self.transport.finish_by = max(deadline, self._loop.time() + 1.0)
        self._stop.set()

    def _owing(self) -> set[asyncio.Task[None]]:
        """The invocations whose response is still to come: not those answered Cancelled
        that run on regardless (waiting for them would only delay the exit)."""
        detached = {r.task for r in self._running.values() if r.answered}
        return {task for task in self._invocations if task not in detached}

    async def _abandon(self) -> None:
        """The stream is over: cancel what is left; replies could not be sent anyway."""
        for task in list(self._tasks):
            task.cancel()
        for running in self._running.values():
            running.cancel.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawner(
        self, handler: Callable[[str, Any], Coroutine[Any, Any, None]]
    ) -> Callable[[str, Any], None]:
        def spawn(request_id: str, body: Any) -> None:
            self._spawn(handler(request_id, body))

        return spawn

    def _reply(self, request_id: str, **content: Any) -> None:
        self._spawn(self.transport.send(pb.StreamingMessage(request_id=request_id, **content)))

    async def call(self, hook: str, arg: Any, then: Callable[[Any], Any] | None = None) -> Any:
        """Run a worker hook: await it when async, otherwise in the pool with our context.
        `then` is applied to what the hook returned, in the pool for a plain def hook (so
        encoding a large result does not hold up the event loop)."""
        method = getattr(self.worker, hook)
        if hook in self._async_hooks:
            value = method(arg)  # a coroutine (a wrapper marked async may return a value)
        elif hook not in self._overridden:
            value = method(arg)  # the base class's defaults are trivial
            return then(value) if then is not None else value
        else:
            context = contextvars.copy_context()
            ok, value, done = await self._loop.run_in_executor(
                self._pool, context.run, _captured, method, arg, then
            )
            if not ok:
                raise value  # raised here, not thrown in: GeneratorExit included
            if done:
                return value
        if inspect.isawaitable(value):  # e.g. a plain def that returns a coroutine
            value = await value
        return then(value) if then is not None else value

    def dispatch(self, message: Message | RawInvocation | HostRequest | Unreadable) -> None:
        if type(message) is RawInvocation:  # the hot path, read by _fastwire
            self._invocation_request(message)
            return
        if type(message) is HostRequest:  # init and loads, read by _fastwire
            self._handlers[message.kind](message.request_id, message.body)
            return
        if isinstance(message, Unreadable):
            self._unreadable(message)
            return
        import betterproto2  # loaded with the messages

        assert isinstance(message, pb.StreamingMessage)
        kind, body = betterproto2.which_one_of(message, "content")
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(message.request_id, body)
        elif kind:
            log.warning("ignoring %s: the host does not send it to workers", kind)
        else:
            log.warning("ignoring a message of a kind this worker does not know (newer host?)")

    def _replace(self, message: Message, problem: Exception) -> Message | None:
        """What to send instead of a message the writer cannot send as it is: a Failure
        for an invocation's response (so it still gets exactly one)."""
        import betterproto2

        kind, body = betterproto2.which_one_of(message, "content")
        assert body is not None
        if kind == "invocation_response":
            invocation_id = body.invocation_id
            log.error("the response of invocation %s cannot be sent: %s", invocation_id, problem)
            return pb.StreamingMessage(
                request_id=message.request_id,
                invocation_response=pb.InvocationResponse(
                    invocation_id=invocation_id,
                    result=failure(f"the function's result cannot be sent to the host: {problem}"),
                ),
            )
        log.error("dropped a %s that cannot be sent: %s", kind, problem)
        return None

    # -- handshake ---------------------------------------------------------------------------
    async def _init(self, request_id: str, request: InitRequest) -> None:
        error: BaseException | None = None
        try:
            self._log_route.apply_host_levels(request.log_categories)
            result = await self.call("on_init", request)
            if result is not None:
                if not isinstance(result, InitResult):
                    raise TypeError(f"on_init must return InitResult or None, not {result!r}")
                _check_strings(result.capabilities, "InitResult.capabilities")
                _check_strings(result.custom_properties, "InitResult.custom_properties")
                for name in ("runtime_name", "runtime_version", "worker_version"):
                    value = getattr(result, name)
                    if value is not None and not isinstance(value, str):
                        raise TypeError(f"InitResult.{name} must be a str or None: {value!r}")
                self._init_result = result
                self._capabilities.update(result.capabilities)
        except BaseException as exc:
            if _cancelled_by_us(exc):
                raise
            log.error("on_init failed: %s", exc, exc_info=True)
            error = exc
        self._initialized.set()
        try:
            metadata = self._worker_metadata_fields()
            response = worker_init_response(
                request_id,
                worker_version=metadata["worker_version"],
                capabilities=self._capabilities,
                result=_status(error, "on_init"),
                runtime_name=metadata["runtime_name"],
                runtime_version=metadata["runtime_version"],
                worker_bitness=metadata["worker_bitness"],
                custom_properties=metadata["custom_properties"],
            )
        except Exception as exc:  # e.g. a class attribute of the wrong type: still answer
            log.error("cannot describe this worker to the host: %s", exc, exc_info=True)
            response = worker_init_response(
                request_id,
                worker_version="",
                capabilities={},
                result=_status(exc, "WorkerInitResponse"),
                runtime_name="",
                runtime_version="",
                worker_bitness="",
                custom_properties={},
            )
        await self.transport.send(response)

    def _worker_metadata_fields(self) -> dict[str, Any]:
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
            "worker_bitness": _machine(),
            "custom_properties": dict(result.custom_properties),
        }

    def _worker_metadata(self) -> pb.WorkerMetadata:
        return pb.WorkerMetadata(**self._worker_metadata_fields())

    async def _metadata(self, request_id: str, request: MetadataRequest) -> None:
        await self._initialized.wait()
        directory = request.function_app_directory
        try:
            found = await self._build_index(directory)
            results = [] if found is None else [_rpc_metadata(e, directory) for e in found.values()]
            response = function_metadata_response(
                request_id, results, status_result(SUCCESS), use_default_indexing=found is None
            )
        except BaseException as exc:
            if _cancelled_by_us(exc):
                raise
            log.error("on_functions_metadata failed: %s", exc, exc_info=True)
            response = function_metadata_response(
                request_id, [], _status(exc, "on_functions_metadata")
            )
        await self.transport.send(response)

    async def _build_index(self, directory: str) -> dict[str, FunctionMetadata] | None:
        found = await self.call("on_functions_metadata", MetadataRequest(directory))
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
        return index

    # -- loading -----------------------------------------------------------------------------
    async def _load_one(self, request_id: str, info: FunctionInfo) -> None:
        error = await self._load(info)
        status = _status(error, "on_function_load")
        await self.transport.send(function_load_response(request_id, info.function_id, status))

    async def _load_collection(
        self, request_id: str, request: pb.FunctionLoadRequestCollection
    ) -> None:
        async def load(request: pb.FunctionLoadRequest) -> pb.FunctionLoadResponse:
            try:
                info = FunctionInfo.from_rpc(
                    request.function_id, request.metadata or pb.RpcFunctionMetadata()
                )
            except Exception as exc:  # a request we cannot read costs only its function
                log.error("function %s cannot be loaded: %s", request.function_id, exc)
                status = failure(f"the FunctionLoadRequest could not be read: {exc}")
            else:
                error = await self._load(info)
                status = (
                    success()
                    if error is None
                    else failure(error, user=True, source="on_function_load")
                )
            return pb.FunctionLoadResponse(function_id=request.function_id, result=status)

        responses = await asyncio.gather(*map(load, request.function_load_requests))
        await self.transport.send(
            pb.StreamingMessage(
                request_id=request_id,
                function_load_response_collection=pb.FunctionLoadResponseCollection(
                    function_load_responses=list(responses)
                ),
            )
        )

    async def _load(self, info: FunctionInfo) -> BaseException | None:
        """Load one function; what it failed with, or None."""
        function_id = info.function_id
        done = self._loading.setdefault(function_id, asyncio.Event())
        try:
            await self._initialized.wait()
            if not function_id:
                raise ValueError("the FunctionLoadRequest has no function_id")
            info = await self._with_index(info)
            await self.call("on_function_load", info)
        except BaseException as exc:
            if _cancelled_by_us(exc):
                raise
            log.error("function %s failed to load: %s", function_id, exc)
            self._load_errors[function_id] = error_details(exc).message
            self._functions.pop(function_id, None)
            return exc
        else:
            self._functions[function_id] = info
            self._load_errors.pop(function_id, None)
            return None
        finally:
            done.set()
            self._loading.pop(function_id, None)

    async def _with_index(self, info: FunctionInfo) -> FunctionInfo:
        """Attach the worker's own index entry; a restarted worker, which the host never
        asks for metadata, indexes itself on its first load of a worker-indexed function."""
        if "on_functions_metadata" not in self._overridden:
            return info
        if self._index is None and info.properties.get(WORKER_INDEXED):
            async with self._index_lock:
                if self._index is None:
                    # The host starts workers in the function app's root directory.
                    await self._build_index(os.getcwd())
        entry = (self._index or {}).get(info.function_id)
        return replace(info, indexed=entry) if entry is not None else info

    # -- invocations -------------------------------------------------------------------------
    def _unreadable(self, frame: Unreadable) -> None:
        """A frame that could not be decoded: a request in it still gets its one reply, a
        Failure saying why (the host then fails what it asked for, not waits for it)."""
        kind = frame.content
        what = _REQUEST_NAMES.get(kind, "message")
        reason = f"the host's {what} could not be read: {frame.reason}"
        log.error("%s", reason)
        status = failure(reason)
        if kind == 4:
            if not frame.invocation_id:
                return  # nobody to address the reply to
            reply: dict[str, Any] = {
                "invocation_response": pb.InvocationResponse(
                    invocation_id=frame.invocation_id, result=status
                )
            }
        elif kind == 8:
            if frame.function_id:  # its invocations fail with the reason
                self._load_errors[frame.function_id] = reason
            reply = {
                "function_load_response": pb.FunctionLoadResponse(
                    function_id=frame.function_id, result=status
                )
            }
        elif kind == 17:
            self._initialized.set()  # nothing waits for an init that will not come
            reply = {"worker_init_response": pb.WorkerInitResponse(result=status)}
        elif kind == 29:
            reply = {"function_metadata_response": pb.FunctionMetadataResponse(result=status)}
        elif kind == 31:  # which functions it held cannot be known
            reply = {"function_load_response_collection": pb.FunctionLoadResponseCollection()}
        elif kind == 25:
            reply = {
                "function_environment_reload_response": pb.FunctionEnvironmentReloadResponse(
                    result=status
                )
            }
        elif kind == 33:
            reply = {"worker_warmup_response": pb.WorkerWarmupResponse(result=status)}
        elif kind == 12:
            reply = {"worker_status_response": pb.WorkerStatusResponse()}
        elif kind == 27:
            reply = {"close_shared_memory_resources_response": _no_maps_closed()}
        elif kind == 14:  # the host wants us gone, whatever else the frame said
            self.request_shutdown("the host sent WorkerTerminate", DEFAULT_TERMINATE_GRACE)
            return
        else:
            return  # no reply expected (a cancel, or a kind we do not know)
        self._reply(frame.request_id, **reply)

    def _invocation_request(self, request: RawInvocation) -> None:
        request_id = request.request_id
        invocation_id = request.invocation_id
        refusal = ""
        if self._terminating:
            refusal = "the worker is shutting down and takes no new invocations"
        elif not invocation_id:
            refusal = "the InvocationRequest has no invocation_id"
        elif invocation_id in self._running:
            refusal = f"invocation id {invocation_id} is already running on this worker"
        if refusal:
            log.error("refused invocation %r: %s", invocation_id, refusal)
            self._reply(
                request_id,
                invocation_response=pb.InvocationResponse(
                    invocation_id=invocation_id, result=failure(refusal)
                ),
            )
            return
        running = _Running(invocation_id=invocation_id, request_id=request_id)
        self._running[invocation_id] = running
        task = self._spawn(self._invoke(request, running))
        running.task = task
        self._invocations.add(task)
        task.add_done_callback(self._invocation_done)
        if len(self._invocations) >= self._backlog:
            self.transport.reading.clear()  # resumed by _invocation_done

    def _invocation_done(self, task: asyncio.Task[None]) -> None:
        self._invocations.discard(task)
        if len(self._invocations) < self._backlog:
            self.transport.reading.set()

    async def _invoke(self, request: RawInvocation, running: _Running) -> None:
        invocation_id = request.invocation_id
        running.started = True
        holding = False
        try:
            try:
                if running.cancel.is_set():  # cancelled before this task first ran
                    raise asyncio.CancelledError
                await self._slots.acquire()
                holding = True
                response = await self._execute(request, running)
            except asyncio.CancelledError:
                if self._closed:  # the stream is gone: nobody to answer
                    raise
                response = pb.InvocationResponse(invocation_id=invocation_id, result=cancelled())
            except Exception as exc:  # a workerkit bug must still cost only this invocation
                log.exception("internal error in invocation %s", invocation_id)
                response = pb.InvocationResponse(
                    invocation_id=invocation_id,
                    result=failure(f"workerkit internal error: {exc!r}"),
                )
            finally:
                self._running.pop(invocation_id, None)
                if running.overdue is not None:
                    running.overdue.cancel()
            if running.answered:  # answered Cancelled when it would not stop: one reply only
                name = running.invocation.function.name if running.invocation else "?"
                log.info(
                    "function %r (invocation %s) ended after it was answered Cancelled;"
                    " what it returned is dropped",
                    name,
                    invocation_id,
                )
                return
            running.answered = True
            # The slot is held until the response is on the wire: with a host that reads
            # slowly, at most `max_in_flight` responses wait in memory.
            if isinstance(response, bytes):
                await self.transport.send_and_wait(response)
            else:  # a Failure or Cancelled: uncommon, built with the generated messages
                await self.transport.send_and_wait(
                    pb.StreamingMessage(request_id=request.request_id, invocation_response=response)
                )
        finally:
            if holding:
                self._slots.release()

    async def _execute(
        self, request: RawInvocation, running: _Running
    ) -> pb.InvocationResponse | bytes:
        """Run one invocation; the response as message, or as bytes on the fast path."""
        invocation_id = request.invocation_id
        function_id = request.function_id
        loading = self._loading.get(function_id)
        if loading is not None:
            await loading.wait()
        function = self._functions.get(function_id)
        if function is None:
            error = self._load_errors.get(function_id)
            message = (
                f"function {function_id} failed to load: {error}"
                if error is not None
                else f"no function with id {function_id!r} is loaded on this worker"
            )
            return pb.InvocationResponse(invocation_id=invocation_id, result=failure(message))
        try:
            invocation = _invocation(request, function, running.cancel)
        except ConversionError as exc:
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(f"function {function.name}: {exc}"),
            )
        running.invocation = invocation
        current_invocation_id.set(invocation_id)
        try:
            response: bytes = await self.call(
                "on_invocation",
                invocation,
                functools.partial(_response, function, request.request_id, invocation_id),
            )
        except (asyncio.CancelledError, InvocationCancelled) as exc:
            if running.cancel.is_set() or _task_cancelled():
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return pb.InvocationResponse(invocation_id=invocation_id, result=cancelled())
            # Raised by the function itself, with no cancel asked for: a failure like any other
            # (Cancelled tells the host it asked for this, which it did not).
            log.error("function %s failed: %r (nothing cancelled it)", function.name, exc)
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(
                    f"{type(exc).__name__} raised by the function, but nothing cancelled"
                    " the invocation",
                    user=True,
                    source=function.name,
                ),
            )
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code too
            log.error("function %s failed: %s", function.name, exc, exc_info=True)
            return pb.InvocationResponse(
                invocation_id=invocation_id, result=failure(exc, user=True, source=function.name)
            )
        limit = self.args.max_message_length
        if len(response) > limit:
            too_big = MessageTooLarge(len(response), limit, f"the response of {invocation_id}")
            log.error("%s", too_big)
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(f"the function's result cannot be sent to the host: {too_big}"),
            )
        return response

    def _invocation_cancel(self, request_id: str, request: pb.InvocationCancel) -> None:
        running = self._running.get(request.invocation_id)
        if running is None:
            log.debug("cancel of %s: not running (finished or unknown)", request.invocation_id)
            return
        self._cancel(running)

    def _cancel(self, running: _Running) -> None:
        first = not running.cancel.is_set()
        running.cancel.set()
        if running.task is not None and running.started:
            running.task.cancel()
        if first and not running.answered:
            running.overdue = self._loop.call_later(CANCEL_GRACE, self._cancel_overdue, running)
        if running.invocation is not None and "on_cancel" in self._overridden:
            self._spawn(self._quietly("on_cancel", running.invocation))

    def _cancel_overdue(self, running: _Running) -> None:
        """A cancelled invocation that has not ended `CANCEL_GRACE` later (an ``async def``
        that swallows CancelledError, say), or when the worker stops, is answered Cancelled
        now, as a plain def stuck in its thread is. Its task runs on, detached: it keeps its
        place among the `max_in_flight` (it does hold memory and the loop), and whatever it
        ends with is dropped, so the invocation still gets exactly one response."""
        if running.overdue is not None:
            running.overdue.cancel()
            running.overdue = None
        task = running.task
        if running.answered or self._closed or task is None or task.done():
            return
        running.answered = True
        invocation_id = running.invocation_id
        invocation = running.invocation
        name = invocation.function.name if invocation is not None else "?"
        log.warning(
            "function %r (invocation %s) still runs %g s after it was cancelled: answered"
            " Cancelled; it keeps running, and its slot of max_in_flight, until it returns."
            " Does it swallow asyncio.CancelledError (a catch-all `except BaseException`)?",
            name,
            invocation_id,
            CANCEL_GRACE,
        )
        self._reply(
            running.request_id,
            invocation_response=pb.InvocationResponse(
                invocation_id=invocation_id, result=cancelled()
            ),
        )

    async def _quietly(self, hook: str, arg: Any) -> None:
        try:
            await self.call(hook, arg)
        except Exception as exc:
            log.error("%s failed: %s", hook, exc, exc_info=True)

    # -- control -----------------------------------------------------------------------------
    def _status(self, request_id: str, request: pb.WorkerStatusRequest) -> None:
        self._reply(request_id, worker_status_response=pb.WorkerStatusResponse())

    def _terminate(self, request_id: str, request: pb.WorkerTerminate) -> None:
        grace = request.grace_period
        self.request_shutdown(
            "the host sent WorkerTerminate",
            grace.total_seconds() if grace is not None else DEFAULT_TERMINATE_GRACE,
        )

    async def _environment_reload(
        self, request_id: str, request: pb.FunctionEnvironmentReloadRequest
    ) -> None:
        await self._initialized.wait()
        try:
            environment = dict(request.environment_variables)
            if environment:
                os.environ.clear()
                os.environ.update(environment)
            if request.function_app_directory:
                os.chdir(request.function_app_directory)
            await self.call(
                "on_environment_reload",
                EnvironmentReload(environment, request.function_app_directory),
            )
            status = success()
        except BaseException as exc:
            if _cancelled_by_us(exc):
                raise
            log.error("environment reload failed: %s", exc, exc_info=True)
            status = failure(exc, user=True, source="on_environment_reload")
        metadata = None
        try:
            metadata = self._worker_metadata()
        except Exception as exc:  # still answer, without the metadata
            log.error("cannot describe this worker to the host: %s", exc, exc_info=True)
            status = failure(exc, source="FunctionEnvironmentReloadResponse")
        await self.transport.send(
            pb.StreamingMessage(
                request_id=request_id,
                function_environment_reload_response=pb.FunctionEnvironmentReloadResponse(
                    worker_metadata=metadata,
                    capabilities=dict(self._capabilities),
                    result=status,
                ),
            )
        )

    async def _warmup(self, request_id: str, request: pb.WorkerWarmupRequest) -> None:
        try:
            await self.call("on_warmup", Warmup(request.worker_directory))
            status = success()
        except BaseException as exc:
            if _cancelled_by_us(exc):
                raise
            status = failure(exc, user=True, source="on_warmup")
        await self.transport.send(
            pb.StreamingMessage(
                request_id=request_id, worker_warmup_response=pb.WorkerWarmupResponse(status)
            )
        )

    async def _close_shared_memory(
        self, request_id: str, request: pb.CloseSharedMemoryResourcesRequest
    ) -> None:
        await self.transport.send(
            pb.StreamingMessage(
                request_id=request_id,
                close_shared_memory_resources_response=_no_maps_closed(request.map_names),
            )
        )

    def _file_change(self, request_id: str, request: pb.FileChangeEventRequest) -> None:
        log.info("file change reported by the host: %s %s", request.type, request.full_path)


#: Requests that expect a reply, by content field number (for messages about them).
_REQUEST_NAMES = {
    4: "InvocationRequest",
    8: "FunctionLoadRequest",
    12: "WorkerStatusRequest",
    14: "WorkerTerminate",
    17: "WorkerInitRequest",
    21: "InvocationCancel",
    25: "FunctionEnvironmentReloadRequest",
    27: "CloseSharedMemoryResourcesRequest",
    29: "FunctionsMetadataRequest",
    31: "FunctionLoadRequestCollection",
    33: "WorkerWarmupRequest",
}


def _no_maps_closed(names: Sequence[str] = ()) -> pb.CloseSharedMemoryResourcesResponse:
    """This worker never creates shared memory maps, so it closes none of them."""
    return pb.CloseSharedMemoryResourcesResponse(close_map_results=dict.fromkeys(names, False))


@functools.cache
def _machine() -> str:
    """The processor architecture, for `WorkerMetadata.worker_bitness`; "" where the
    platform cannot say (it is informational: never worth losing a reply over)."""
    try:
        return os.uname().machine
    except Exception:  # no os.uname here (Windows), or it failed
        pass
    try:
        import platform

        return platform.machine()
    except Exception:
        return ""


def _status(error: BaseException | None, hook: str) -> bytes:
    """The encoded `StatusResult` of a hook that raised `error` (None: it succeeded)."""
    if error is None:
        return status_result(SUCCESS)
    return status_result(FAILURE, error_details(error, user=True, source=hook))


def _check_strings(mapping: Mapping[str, str], what: str) -> None:
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} must map str to str, got {key!r}: {value!r}")


def _task_cancelled() -> bool:
    """Whether the current task is being cancelled (by us: a CancelledError raised by user
    code leaves the count at 0)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _cancelled_by_us(exc: BaseException) -> bool:
    """`exc` is the cancellation of this task (the stream ended, or we are stopping); a
    CancelledError a hook raised or let through on its own is the hook's failure, and its
    request still gets a reply."""
    return isinstance(exc, asyncio.CancelledError) and _task_cancelled()


def _captured(
    method: Callable[[Any], Any], arg: Any, then: Callable[[Any], Any] | None
) -> tuple[bool, Any, bool]:
    """Run a plain-def hook in a pool thread, and `then` on its result unless that is
    awaitable: (ok, the value or the exception, whether `then` ran). The exception is
    returned, not raised: a future's exception is thrown into the awaiting coroutine, and a
    thrown GeneratorExit closes that coroutine instead of reaching its handlers (the reply
    would be lost)."""
    try:
        value = method(arg)
        if then is None or inspect.isawaitable(value):
            return True, value, False
        return True, then(value), True
    except BaseException as exc:
        return False, exc, False


def _invocation(
    request: RawInvocation, function: FunctionInfo, cancel: threading.Event
) -> Invocation:
    inputs: dict[str, Any] = {}
    raw: dict[str, memoryview] = {}
    assert request.inputs is not None and request.metadata is not None
    for name, data, shared in request.inputs:
        if shared:
            raise ConversionError(
                f"input {name!r} came through shared memory, which this worker does not support"
            )
        if data is not None:
            raw[name] = data
        try:
            inputs[name] = decode_value(data)
        except ConversionError as exc:
            raise ConversionError(f"cannot read input {name!r}: {exc}") from None
    trace = TraceContext(*read_trace(request.trace)) if request.trace is not None else _NO_TRACE
    retry = None
    if request.retry is not None:
        context = pb.RetryContext.parse(bytes(request.retry))
        retry = RetryContext(
            context.retry_count,
            context.max_retry_count,
            context.exception.message if context.exception is not None else "",
        )
    return Invocation(
        invocation_id=request.invocation_id,
        function=function,
        inputs=inputs,
        raw_inputs=LazyValues(raw, typed_data),
        trigger_metadata=LazyValues(request.metadata, _metadata_value),
        trace_context=trace,
        retry_context=retry,
        _cancel=cancel,
    )


_NO_TRACE = TraceContext()


def _metadata_value(data: memoryview) -> Any:
    try:
        return decode_value(data)
    except ConversionError:  # metadata is informational: keep what the host sent
        return typed_data(data)


def _response(function: FunctionInfo, request_id: str, invocation_id: str, result: Any) -> bytes:
    """The InvocationResponse, encoded, for what `on_invocation` returned; raises (a user
    error: the invocation fails) when the result cannot be sent."""
    if isinstance(result, InvocationResult):
        value, outputs = result.return_value, dict(result.outputs)
    else:
        value, outputs = result, {}
    if "$return" in outputs:
        if value is not None:
            raise ValueError("both return_value and outputs['$return'] are set; use one")
        value = outputs.pop("$return")
    bindings = function.bindings
    if isinstance(value, HttpResponse) and "$return" not in bindings:
        # An HTTP response returned from a function whose HTTP output is named: put it there.
        http_outputs = [b.name for b in bindings.values() if b.type == "http" and b.is_output]
        if len(http_outputs) == 1 and http_outputs[0] not in outputs:
            outputs[http_outputs[0]] = value
            value = None
    if value is not None and bindings and "$return" not in bindings:
        # The host would read a JSON object's keys as output bindings (legacy behaviour).
        raise ValueError(
            f"function {function.name} returned a value but has no '$return' binding: return"
            " None, or InvocationResult(outputs={...}) for its named output bindings"
        )
    if outputs and bindings:
        unknown = [name for name in outputs if name not in bindings or not bindings[name].is_output]
        if unknown:
            declared = ", ".join(n for n, b in bindings.items() if b.is_output) or "none"
            raise ValueError(
                f"outputs {', '.join(map(repr, unknown))} are not output bindings of function "
                f"{function.name} (its output bindings: {declared})"
            )
    try:
        return invocation_response(
            request_id,
            invocation_id,
            None if value is None else encode_chunks(value),
            [(name, encode_chunks(data)) for name, data in outputs.items()],
        )
    except ConversionError as exc:
        raise ConversionError(
            f"cannot send the result of function {function.name}: {exc}"
        ) from None


def _rpc_metadata(entry: FunctionMetadata, app_directory: str) -> bytes:
    """`entry` as the `RpcFunctionMetadata` the host expects; what the host would reject is
    reported in its status, so the host names the function and the problem."""
    problems = entry.problems()
    raw_bindings: list[str] = []
    for binding in entry.bindings:
        try:
            raw_bindings.append(json.dumps(dict(binding), separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            problems.append(f"binding {binding.get('name')!r} is not JSON: {exc}")
    for what, value in (
        ("directory", entry.directory),
        ("script_file", entry.script_file),
        ("entry_point", entry.entry_point),
    ):
        if not isinstance(value, str):
            raise TypeError(f"FunctionMetadata.{what} of {entry.name!r} must be a str: {value!r}")
    _check_strings(entry.properties, f"FunctionMetadata.properties of {entry.name!r}")
    status = None
    if problems:
        status = status_result(
            FAILURE, error_details(f"function {entry.name!r}: " + "; ".join(problems))
        )
    return rpc_function_metadata(
        name=entry.name,
        function_id=entry.function_id,
        directory=entry.directory or app_directory,
        script_file=entry.script_file,
        entry_point=entry.entry_point,
        raw_bindings=raw_bindings,
        properties={**entry.properties, WORKER_INDEXED: "True"},
        status=status,
    )
