"""The runtime around the protocol: one worker process's stream, tasks, pool and logs.

The reader hands every message to `Session.dispatch` on the event loop. Invocations go to
`invoking.Invocations`, each its own task; every other message goes to `control.Control`,
the I/O-free state machine, whose effects (replies, hooks to run, loads under way, a
shutdown) the session carries out, feeding each hook's outcome back. Status, cancel and
terminate are handled there and then, so they never wait behind user code. Hooks go through
`Session.call`, which awaits ``async def`` hooks and runs plain ones in the thread pool with
the caller's context. With HTTP streaming on, `httpproxy.Proxy` (imported only then) is the
worker's HTTP server for the host's proxy, opened when `Control` asks (`OpenProxy`) and
closed when the session ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._types import Shutdown
from .._wire.messages import HostRequest, RawInvocation, start_stream
from .._wire.pb import pb
from ..cli import HostArgs
from ..errors import failure
from . import tracing
from .control import Call, Control, Effect, Loading, LogLevels, OpenProxy, Send, Settled, Stop
from .invoking import Invocations, cancelled_by_us, captured
from .logs import LogRoute, current_route
from .logs import handler as log_handler
from .replies import wants_http_streaming
from .sharedmem import CAPABILITY, FUNCTION_DATA_CACHE, SharedMemory
from .sharedmem import capabilities as shared_memory_capabilities
from .transport import Transport, Unreadable
from .watchdog import LoopWatchdog

if TYPE_CHECKING:
    from .._generated.AzureFunctionsRpcMessages import StreamingMessage as Message
    from ..worker import Worker, WorkerOptions
    from .httpproxy import Proxy

log = logging.getLogger("workerkit")

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
        self.control = Control(
            worker,
            os.getcwd,
            lambda: wants_http_streaming(options.http_streaming, os.environ),
            lambda: tracing.settings(self.invocations.tracing, options.opentelemetry, os.environ),
            lambda: shared_memory_capabilities(os.environ),
        )
        #: The maps of large outputs (shared-memory data transfer), until the host closes them.
        self.shared = SharedMemory(
            lambda: bool(self.control.capabilities.get(CAPABILITY)),
            lambda: self.control.host_capabilities.get(FUNCTION_DATA_CACHE, "").lower() == "true",
        )
        #: The HTTP server for the host's proxy, once HTTP streaming is on.
        self.proxy: Proxy | None = None
        self.catalog = self.control.catalog
        #: Functions with a load under way: their invocations wait for the event.
        self._loading: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None
        self._shutdown_code = 0
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="workerkit-hook")
        self._loop = asyncio.get_running_loop()
        self.invocations = Invocations(self)

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
                if self.proxy is not None:
                    await self.proxy.close()
            finally:  # even when cancelled again while abandoning
                self._pool.shutdown(wait=False, cancel_futures=True)
                self.shared.close_all()  # output maps the host never closed
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
            self._apply(self.control.receive(message.kind, message.request_id, message.body))
            return
        if isinstance(message, Unreadable):
            self._apply(self.control.unreadable(message))
            return
        import betterproto2  # loaded with the messages

        assert isinstance(message, pb.StreamingMessage)
        kind, body = betterproto2.which_one_of(message, "content")
        if kind == "invocation_cancel":
            assert isinstance(body, pb.InvocationCancel)
            self.invocations.cancel_request(message.request_id, body)
        elif kind == "close_shared_memory_resources_request":  # deletes files: not Control's
            assert isinstance(body, pb.CloseSharedMemoryResourcesRequest)
            reply = self.shared.close(body.map_names)
            self._reply(message.request_id, close_shared_memory_resources_response=reply)
        elif self.control.handles(kind):
            self._apply(self.control.receive(kind, message.request_id, body))
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

    # -- control messages -------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        """Carry out what `Control` asked for, in order."""
        for effect in effects:
            if type(effect) is Send:
                self._spawn(self.transport.send(effect.message))
            elif type(effect) is Call:
                self._spawn(self._run_hook(effect))
            elif type(effect) is Loading:
                self._loading.setdefault(effect.function_id, asyncio.Event())
            elif type(effect) is Settled:
                settled = self._loading.pop(effect.function_id, None)
                if settled is not None:
                    settled.set()
            elif type(effect) is LogLevels:
                self._log_route.apply_host_levels(effect.categories)
            elif type(effect) is Stop:
                self.request_shutdown(effect.reason, effect.grace)
            elif type(effect) is OpenProxy:
                self._spawn(self._open_proxy(effect.token))
            else:  # pragma: no cover - a new effect without a case here
                raise AssertionError(f"unknown effect {effect!r}")

    async def _run_hook(self, call: Call) -> None:
        try:
            if call.environment:
                os.environ.clear()
                os.environ.update(call.environment)
            if call.directory:
                os.chdir(call.directory)
            value = await self.call(call.hook, call.arg)
        except BaseException as exc:
            if cancelled_by_us(exc):
                raise  # the stream is gone: nobody to answer
            effects = self.control.hook_done(call.token, False, exc)
        else:
            effects = self.control.hook_done(call.token, True, value)
        self._apply(effects)

    async def _open_proxy(self, token: int) -> None:
        """Open the HTTP server for the host's proxy (once) and report its URI to Control."""
        value: object
        try:
            if self.proxy is None:
                from .httpproxy import Proxy  # aiohttp: only with streaming on

                proxy = Proxy(
                    wait=self.options.http_match_timeout,
                    prefetch=self.options.http_body_prefetch,
                    disconnected=self.invocations.disconnected,
                )
                await proxy.start()
                self.proxy = proxy
            ok, value = True, self.proxy.uri
        except Exception as exc:
            ok, value = False, exc
        self._apply(self.control.hook_done(token, ok, value))

    async def _quietly(self, hook: str, arg: Any) -> None:
        try:
            await self.call(hook, arg)
        except Exception as exc:
            log.error("%s failed: %s", hook, exc, exc_info=True)
