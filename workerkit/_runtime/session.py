"""The protocol state machine: a message from the host in, exactly one reply out.

The reader hands every message to `Session.dispatch` on the event loop. Control messages
(status, cancel, terminate) are answered there and then, so they never wait behind user
code; anything that runs a hook becomes its own task. Hooks go through `Session.call`, which
awaits ``async def`` hooks and runs plain ones in the thread pool with the caller's context.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._types import (
    EnvironmentReload,
    FunctionInfo,
    FunctionMetadata,
    InitRequest,
    InitResult,
    MetadataRequest,
    Shutdown,
    Warmup,
)
from .._wire import schema
from .._wire.messages import (
    HostRequest,
    RawInvocation,
    function_load_response,
    function_metadata_response,
    start_stream,
    status_result,
    worker_init_response,
)
from .._wire.pb import pb
from ..cli import HostArgs
from ..errors import (
    SUCCESS,
    error_details,
    failure,
    success,
)
from .invoking import Invocations, cancelled_by_us, captured
from .logs import LogRoute, current_route
from .logs import handler as log_handler
from .protocol import Catalog
from .replies import (
    CAPABILITIES,
    WORKER_INDEXED,
    answer_unreadable,
    check_strings,
    hook_status,
    machine,
    no_maps_closed,
    rpc_metadata,
)
from .transport import Transport, Unreadable
from .watchdog import LoopWatchdog

if TYPE_CHECKING:
    from .._generated.AzureFunctionsRpcMessages import StreamingMessage as Message
    from ..worker import Worker, WorkerOptions

log = logging.getLogger("workerkit")

DEFAULT_TERMINATE_GRACE = 5.0
#: The exit status by which a worker asks the host for a fresh process, not counted as a
#: crash (the host's WorkerProcess `OnProcessExited`: IntentionalRestartExitCode).
RESTART_EXIT_CODE = 200


class Session:
    """One worker process's conversation with the host."""

    def __init__(self, worker: Worker, args: HostArgs, options: WorkerOptions) -> None:
        """`options`: the worker's, checked by `workerkit.worker.ready_options` (the worker
        side owns the hook registry; the session only reads what the class recorded)."""
        self.options = options
        self.worker = worker
        self.args = args
        self.exit_code = 1
        self._closed = False
        cls = type(worker)
        self._async_hooks = cls._async_hooks
        self._overridden = cls._overridden_hooks
        self.catalog = Catalog()
        self._loading: dict[str, asyncio.Event] = {}
        self._index: dict[str, FunctionMetadata] | None = None
        self._index_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._capabilities: dict[str, str] = dict(CAPABILITIES)
        self._init_result = InitResult()
        self._initialized = asyncio.Event()
        self._stop = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None
        self._shutdown_code = 0
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="workerkit-hook")
        self._loop = asyncio.get_running_loop()
        self.invocations = Invocations(self)
        self._handlers: dict[str, Callable[[str, Any], None]] = {
            "worker_init_request": self._spawner(self._init),
            "functions_metadata_request": self._spawner(self._metadata),
            "function_load_request": self._spawner(self._load_one),
            "function_load_request_collection": self._spawner(self._load_collection),
            "invocation_cancel": self.invocations.cancel_request,
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
        for running in self.invocations.running():
            invocation_id = running.invocation_id
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
            self.invocations.ledger.shutting_down = True
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
        log.info(
            "shutting down (%s), %d invocations in flight", reason, len(self.invocations.tasks)
        )
        deadline = self._loop.time() + grace
        # Keep a margin of the grace period for cancelling, on_shutdown and flushing.
        budget = max(grace * 0.6, grace - 2.0, 0.0)
        owing = self.invocations.owing()
        if owing:
            _, pending = await asyncio.wait(owing, timeout=budget)
            for running in self.invocations.running():
                self.invocations.cancel(running)
            pending &= self.invocations.owing()
            if pending:
                await asyncio.wait(pending, timeout=max(deadline - self._loop.time() - 1.0, 0.1))
            # What would not stop is answered before the end.
            for running in self.invocations.running():
                self.invocations.cancel_overdue(running)
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

    async def _abandon(self) -> None:
        """The stream is over: cancel what is left; replies could not be sent anyway."""
        for task in list(self._tasks):
            task.cancel()
        for running in self.invocations.running():
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
                self._pool, context.run, captured, method, arg, then
            )
            if not ok:
                raise value  # raised here, not thrown in: GeneratorExit included
            if done:
                return value
        if inspect.isawaitable(value):  # e.g. a plain def that returns a coroutine
            value = await value
        return then(value) if then is not None else value

    def dispatch(self, message: Message | RawInvocation | HostRequest | Unreadable) -> None:
        if type(message) is RawInvocation:  # the hot path, read by _wire.messages
            self.invocations.request(message)
            return
        if type(message) is HostRequest:  # init and loads, read by _wire.messages
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
                check_strings(result.capabilities, "InitResult.capabilities")
                check_strings(result.custom_properties, "InitResult.custom_properties")
                for name in ("runtime_name", "runtime_version", "worker_version"):
                    value = getattr(result, name)
                    if value is not None and not isinstance(value, str):
                        raise TypeError(f"InitResult.{name} must be a str or None: {value!r}")
                self._init_result = result
                self._capabilities.update(result.capabilities)
        except BaseException as exc:
            if cancelled_by_us(exc):
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
                result=hook_status(error, "on_init"),
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
                result=hook_status(exc, "WorkerInitResponse"),
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
            "worker_bitness": machine(),
            "custom_properties": dict(result.custom_properties),
        }

    def _worker_metadata(self) -> pb.WorkerMetadata:
        return pb.WorkerMetadata(**self._worker_metadata_fields())

    async def _metadata(self, request_id: str, request: MetadataRequest) -> None:
        await self._initialized.wait()
        directory = request.function_app_directory
        try:
            found = await self._build_index(directory)
            results = [] if found is None else [rpc_metadata(e, directory) for e in found.values()]
            response = function_metadata_response(
                request_id, results, status_result(SUCCESS), use_default_indexing=found is None
            )
        except BaseException as exc:
            if cancelled_by_us(exc):
                raise
            log.error("on_functions_metadata failed: %s", exc, exc_info=True)
            response = function_metadata_response(
                request_id, [], hook_status(exc, "on_functions_metadata")
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
        status = hook_status(error, "on_function_load")
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
            if cancelled_by_us(exc):
                raise
            log.error("function %s failed to load: %s", function_id, exc)
            self.catalog.failed(function_id, error_details(exc).message)
            return exc
        else:
            self.catalog.loaded(info)
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
        reason, reply = answer_unreadable(frame)
        log.error("%s", reason)
        kind = frame.content
        if kind == schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST and frame.function_id:
            self.catalog.failed(frame.function_id, reason)  # its invocations fail with it
        elif kind == schema.STREAMING_MESSAGE_WORKER_INIT_REQUEST:
            self._initialized.set()  # nothing waits for an init that will not come
        elif kind == schema.STREAMING_MESSAGE_WORKER_TERMINATE:
            # the host wants us gone, whatever else the frame said
            self.request_shutdown("the host sent WorkerTerminate", DEFAULT_TERMINATE_GRACE)
        if reply is not None:
            self._reply(frame.request_id, **reply)

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
            if cancelled_by_us(exc):
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
            if cancelled_by_us(exc):
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
                close_shared_memory_resources_response=no_maps_closed(request.map_names),
            )
        )

    def _file_change(self, request_id: str, request: pb.FileChangeEventRequest) -> None:
        log.info("file change reported by the host: %s %s", request.type, request.full_path)
