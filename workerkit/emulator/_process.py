"""The supervisor of the worker process: when to start one, what a failure costs, and
running invocations on it, as the host does. Starting, handshaking and ending one worker is
`_channel`'s part.

`Supervisor` owns the gRPC side (a `workerkit.testing.TestHost` on 127.0.0.1, free port) and
one worker process at a time. The host's rules it follows:

- with worker indexing, only the first worker is asked for its functions; a restarted one is
  loaded with the functions the first one reported;
- a worker error (non-zero exit other than 200, a handshake timeout or failure, a stream that
  ends while the process lives on) fails the invocations in flight and restarts the worker;
  the third error within 30 minutes gives up (the host stops), so there are two restarts
  after errors: the host restarts while its count of errors, emptied when one comes more than
  30 minutes after the last, is below ``ErrorEventsThreshold`` (3 times the process count, one
  process here: ``StartWorkerChannel`` and ``AddOrUpdateErrorBucket``). Restarts are spaced by
  ``processRestartInterval`` (the host waits that long after starting a worker before it
  starts another). Each restart line says how many restarts are left; a worker that exits
  before opening its stream with the same output as the previous start is not shown twice
  (`_startup`). Exit 200 restarts without counting; exit 0 unasked gives up at once,
  because the host would neither restart nor notice it
  (src/WebJobs.Script/Workers/Rpc/FunctionRegistration/RpcFunctionInvocationDispatcher.cs,
  src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs);
- an invocation past the function timeout is cancelled (``InvocationCancel`` when the worker
  handles it); if it still has not answered 2 s later the worker is restarted (not counted);
- stopping drains invocations for ``processShutdownTimeout``, then sends ``WorkerTerminate``
  (5 s grace, when the worker handles it) and kills the process if it is still running.

Whatever happens, stopping kills every worker this supervisor started that still runs, with
its process group (each worker leads its own).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import HostConnection, TestHost

from ._app import AppError, FunctionSpec
from ._channel import (
    EXIT_AFTER_STREAM,
    KILL_WAIT,
    TERMINATE_GRACE,
    StartFailed,
    WorkerChannel,
    failure_text,
    handshake,
    index,
    launch,
    load,
    span,
)
from ._console import Console
from ._launch import WorkerConfig
from ._peer import Launched
from ._startup import Line

__all__ = [
    "InputBuilder",
    "InvocationOutcome",
    "Supervisor",
    "SupervisorError",
]

#: After a timed-out invocation is cancelled, how long it may take before the worker restarts.
TIMEOUT_GRACE: Final = 2.0
#: The host's ErrorEventsThreshold for one worker process, and the window in which errors count
#: (WorkerConstants.WorkerRestartErrorIntervalThresholdInMinutes).
ERROR_THRESHOLD: Final = 3
ERROR_WINDOW: Final = 30 * 60.0
#: Restarts after errors before giving up.
MAX_RESTARTS: Final = ERROR_THRESHOLD - 1
_RECENT_INVOCATIONS: Final = 4096


#: Builds an invocation's inputs (name, data; trigger first) and trigger metadata for a worker's
#: capabilities.
InputBuilder = Callable[
    [Mapping[str, str]], tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]
]


class SupervisorError(Exception):
    """The emulator cannot go on: the worker cannot be started, or failed too often."""


@dataclass
class InvocationOutcome:
    """How one invocation ended.

    It succeeded when `error` is None: `response` then has a Success result. Otherwise
    `error` is the failure text shown to the user; `response` is the worker's answer if it
    gave one (a Failure or Cancelled result), and `timed_out` says the function timeout
    passed first.
    """

    invocation_id: str
    function: FunctionSpec
    response: pb.InvocationResponse | None = None
    error: str | None = None
    timed_out: bool = False
    duration: float = 0.0


class Supervisor:
    """Runs the worker for the emulator (module docstring).

    Args:
        config: the worker's configuration.
        app_dir: the function app root (the worker's cwd).
        environment: the host environment (app settings merged in) the worker inherits.
        functions: host-indexed functions (ignored with worker indexing); the function
            timeout and disabled settings are applied by the caller.
        function_timeout: seconds, or None for unbounded.
        console: where to print.
    """

    def __init__(
        self,
        *,
        config: WorkerConfig,
        app_dir: Path,
        environment: Mapping[str, str],
        functions: Sequence[FunctionSpec],
        function_timeout: float | None,
        console: Console,
        prepare: Callable[[list[FunctionSpec]], list[FunctionSpec]] | None = None,
    ) -> None:
        self.config = config
        self.app_dir = app_dir
        self.environment = dict(environment)
        self.function_timeout = function_timeout
        self.console = console
        self.functions: list[FunctionSpec] = list(functions)
        self.function_errors: list[AppError] = []
        self._prepare = prepare or (lambda specs: specs)
        self._indexed = not config.worker_indexing
        self._launched = Launched(lambda: self._host.port)
        self._host = TestHost(
            on_connection=self._on_connection,
            check_peer=self._launched.check,
            on_refused=self._refused,
        )
        self._channel: WorkerChannel | None = None
        self._ready = asyncio.Event()
        self._gave_up = asyncio.Event()
        self._first_ready: asyncio.Future[None] | None = None  # set by start()
        self.failure: str | None = None
        self._stopping = False
        self._errors: list[float] = []
        self._last_start: float | None = None
        #: The output of the last start when it exited before opening its stream.
        self._failed_output: list[Line] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: collections.OrderedDict[str, str] = collections.OrderedDict()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the gRPC server and the first worker; return once its functions are loaded.

        Raises:
            SupervisorError: the worker could not be brought up within the error budget.
        """
        await self._host.start()
        self._first_ready = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name="workerkit-host-supervisor")
        gave_up = asyncio.create_task(self._gave_up.wait())
        waiters: set[asyncio.Future[Any]] = {self._first_ready, gave_up}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gave_up.cancel()
        if not self._first_ready.done():
            self._first_ready.cancel()
            raise SupervisorError(self.failure or "the worker could not be started")

    @property
    def capabilities(self) -> Mapping[str, str]:
        """The running worker's capabilities (empty while none is ready)."""
        return self._channel.capabilities if self._channel is not None else {}

    def in_flight(self) -> int:
        """Invocations sent to the current worker and not answered yet."""
        return len(self._channel.executing) if self._channel is not None else 0

    async def wait_failed(self) -> str:
        """Wait until the supervisor gives up; return why."""
        await self._gave_up.wait()
        return self.failure or "the worker failed"

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the invocations in flight to be answered."""
        channel = self._channel
        if channel is None or not channel.executing:
            return
        channel.idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.idle.wait(), timeout)

    async def stop(self, *, grace: float = TERMINATE_GRACE) -> None:
        """Terminate the worker (WorkerTerminate, then kill) and close the gRPC server.

        Every wait is bounded, and whatever happens (an error, a cancel) every worker process
        this supervisor started is killed before it returns or raises.
        """
        self._stopping = True
        self._ready.clear()
        try:
            channel = self._channel
            if channel is not None:
                await channel.end("the host is shutting down", grace=grace)
            if self._runner is not None:
                self._runner.cancel()
                await asyncio.wait({self._runner}, timeout=5)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=5)
        finally:
            self.kill()
            try:
                # Bounded: on 3.12+ closing waits for every gRPC connection to go.
                await asyncio.wait_for(self._host.stop(), 5)
            except Exception as exc:
                self.console.warning(f"The gRPC server did not close cleanly: {exc!r}")

    def kill(self) -> None:
        """Kill every worker process this supervisor started that still runs (a second
        Ctrl-C, and the last step of `stop`); never raises."""
        self._stopping = True
        for channel in list(self._launched.channels.values()):
            channel.ended_on_purpose = channel.ended_on_purpose or "killed"
            channel.kill()

    # -- invocations -------------------------------------------------------------------------
    async def invoke(
        self, function: FunctionSpec, data: InputBuilder, *, reason: str
    ) -> InvocationOutcome:
        """Run one invocation on the worker and report how it ended (never raises for it).

        Waits for a ready worker (e.g. during a restart) within the function timeout, then
        calls `data` with that worker's capabilities for the inputs (trigger first) and the
        trigger metadata, so they are shaped for the worker that runs them.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        invocation_id = str(uuid.uuid4())
        outcome = InvocationOutcome(invocation_id, function)
        timeout = self.function_timeout
        try:
            channel = await self._ready_channel(timeout)
        except TimeoutError:
            outcome.error = "no worker became ready within the function timeout"
            outcome.timed_out = True
            return outcome
        except SupervisorError as exc:
            outcome.error = str(exc)
            return outcome
        load_error = channel.load_errors.get(function.function_id)
        if load_error is not None:
            outcome.error = f"function {function.name!r} failed to load: {load_error}"
            return outcome
        connection = channel.connection
        assert connection is not None  # a ready channel has its stream
        self.console.info(
            f"Executing 'Functions.{function.name}' (Reason='{reason}', Id={invocation_id})"
        )
        inputs, trigger_metadata = data(channel.capabilities)
        channel.executing[invocation_id] = function.name
        self._remember(invocation_id, function.name)
        pending = None
        try:
            pending = await connection.start_invocation(
                function.function_id,
                dict(inputs),
                trigger_metadata=trigger_metadata,
                invocation_id=invocation_id,
                trace_parent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00",
            )
            remaining = None if timeout is None else max(timeout - (loop.time() - started), 0.001)
            response = await pending.result(remaining)
        except TimeoutError:
            outcome.timed_out = True
            outcome.error = (
                f"Timeout value of {span(timeout)} was exceeded by function:"
                f" Functions.{function.name}"
            )
            if pending is not None:
                self._spawn(self._after_timeout(channel, invocation_id, pending.future))
        except (ConnectionError, OSError) as exc:
            outcome.error = await self._lost_reason(channel, exc)
        else:
            outcome.response = response
            result = response.result
            if result is None or result.status != pb.StatusResultStatus.Success:
                outcome.error = failure_text(result)
        finally:
            channel.executing.pop(invocation_id, None)
            if not channel.executing:
                channel.idle.set()
        outcome.duration = loop.time() - started
        return outcome

    async def _ready_channel(self, timeout: float | None) -> WorkerChannel:
        if self._stopping:
            raise SupervisorError("the host is shutting down")
        if not self._ready.is_set():
            waiter = asyncio.create_task(self._ready.wait())
            gave_up = asyncio.create_task(self._gave_up.wait())
            try:
                done, _ = await asyncio.wait(
                    {waiter, gave_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                gave_up.cancel()
            if not done:
                raise TimeoutError
            if gave_up in done:
                raise SupervisorError(self.failure or "the worker failed")
        channel = self._channel
        if channel is None or self._stopping:
            raise SupervisorError("the host is shutting down")
        return channel

    async def _after_timeout(
        self,
        channel: WorkerChannel,
        invocation_id: str,
        response: asyncio.Future[pb.InvocationResponse],
    ) -> None:
        """What the host does after a function timeout: cancel the invocation, give it
        `TIMEOUT_GRACE` to be answered, and restart the worker only if it is still executing
        it then (src/WebJobs.Script.WebHost/WebScriptHostExceptionHandler.cs,
        OnTimeoutExceptionAsync; RpcFunctionInvocationDispatcher.cs,
        RestartWorkerWithInvocationIdAsync). A worker that answers Cancelled in time is kept.

        The restart fails none of the worker's other invocations itself: it sends
        WorkerTerminate, and the worker may finish them within the grace period, the stream
        being read meanwhile (src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs,
        StopWorkerProcess, then Dispose). Those still unanswered when the worker is gone fail
        at once here; the host drops them (no TryFailExecutions for a timeout restart), so
        they fail at their own function timeout there.
        """
        connection = channel.connection
        if channel.handles("HandlesInvocationCancelMessage") and connection is not None:
            await channel.send_quietly(
                "InvocationCancel", connection.cancel(invocation_id), TIMEOUT_GRACE
            )
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(response), TIMEOUT_GRACE)
        if response.done() or self._stopping or channel is not self._channel:
            return
        self.console.warning(
            "A function timeout has occurred. Restarting worker process executing"
            f" invocationId '{invocation_id}'."
        )
        await channel.end(f"invocation {invocation_id} timed out", grace=TERMINATE_GRACE)

    async def _lost_reason(self, channel: WorkerChannel, exc: BaseException) -> str:
        code = await channel.wait_exit(2.0)
        if channel.ended_on_purpose:
            return f"the worker was stopped ({channel.ended_on_purpose}) during the invocation"
        if code is not None:
            return f"the worker process exited with status {code} during the invocation"
        return f"the worker's stream ended during the invocation ({exc})"

    # -- the supervision loop ---------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._supervise()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave start() or the CLI waiting
            self.console.error(f"Worker supervision failed: {exc!r}")
            self._give_up(f"the emulator's worker supervision failed: {exc!r}")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        counted = False  # the last worker ended with an error
        while not self._stopping:
            if self._last_start is not None:
                wait = self._last_start + self.config.restart_interval - loop.time()
                when = f" in {wait:.1f} s (processRestartInterval)" if wait > 0 else ""
                left = MAX_RESTARTS - len(self._errors)
                self.console.info(
                    f"Restarting the worker{when}; {left} of {MAX_RESTARTS} restarts left after"
                    " this one."
                    if counted
                    else f"Restarting the worker{when}."
                )
                if wait > 0:
                    await asyncio.sleep(wait)
            self._last_start = loop.time()
            try:
                channel = await self._start_channel()
            except StartFailed as failure:
                if self._stopping:
                    return
                self._failed_output = failure.output
                self.console.error(f"Worker start failed: {failure}")
                if not self._count_error(failure.explanation):
                    return
                counted = True
                continue
            self._failed_output = None
            self._channel = channel
            self._ready.set()
            if self._first_ready is not None and not self._first_ready.done():
                self._first_ready.set_result(None)
            message, counts = await self._watch(channel)
            self._ready.clear()
            self._channel = None
            self._launched.forget(channel.worker_id)
            if self._stopping:
                return
            if message is None:  # exit 0 unasked
                return
            counted = counts
            if counts:
                self.console.error(message)
                if not self._count_error(message):
                    return
            else:
                self.console.warning(message)

    def _count_error(self, message: str) -> bool:
        """Record a worker error; False (and give up) when the host's budget is spent."""
        now = asyncio.get_running_loop().time()
        if self._errors and now - self._errors[-1] > ERROR_WINDOW:
            self._errors.clear()
        self._errors.append(now)
        if len(self._errors) >= ERROR_THRESHOLD:
            self._give_up(
                f"the worker failed {len(self._errors)} times within {ERROR_WINDOW / 60:g}"
                f" minutes: giving up after {MAX_RESTARTS} restarts, as the host does."
                f" Last error: {message}"
            )
            return False
        return True

    def _give_up(self, message: str) -> None:
        self.failure = message
        self._gave_up.set()

    async def _watch(self, channel: WorkerChannel) -> tuple[str | None, bool]:
        """Wait for the worker to go away; (message, counts as an error)."""
        connection = channel.connection
        assert connection is not None
        exited = asyncio.create_task(channel.process.wait())
        closed = asyncio.create_task(connection.wait_closed(None))
        try:
            await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        code = channel.process.returncode
        if code is None:
            code = await channel.wait_exit(EXIT_AFTER_STREAM)
        exited.cancel()
        for pump in channel.pumps:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 1.0)
        if channel.ended_on_purpose:
            channel.kill()
            return f"Worker stopped: {channel.ended_on_purpose}.", False
        if code is None:
            channel.kill()
            return (
                "The worker ended its stream but its process is still running; the real host"
                " would not notice and its invocations would time out. The emulator kills it."
                " (A worker must exit non-zero when its stream ends.)",
                True,
            )
        tail = "".join(f"\n  {line}" for line in channel.stderr_tail)
        if code == 0:
            self._give_up(
                "The worker exited with status 0 without being asked to. The real host does not"
                " restart such a worker and its invocations would hang (it only closes the"
                " process on exit 0: OnProcessExited in"
                " src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs):"
                " exit non-zero on errors, or 200 to ask for a restart." + tail
            )
            return None, False
        if code == 200:
            return (
                "The worker exited with status 200: restarting it (not counted as an error).",
                False,
            )
        return f"Language Worker Process exited with status {code}.{tail}", True

    # -- starting a worker -------------------------------------------------------------------
    async def _start_channel(self) -> WorkerChannel:
        channel = await launch(
            self._host,
            self.config,
            app_dir=self.app_dir,
            environment=self.environment,
            console=self.console,
            register=self._launched.register,
            previous=self._failed_output,
        )
        try:
            connection = await handshake(channel, self._host, self.config, app_dir=self.app_dir)
            if not self._indexed:  # only the first worker is asked for its functions
                functions, errors = await index(
                    connection, self.config, app_dir=self.app_dir, console=self.console
                )
                self.functions = self._prepare(functions)
                self.function_errors = errors
                self._indexed = True
            await load(channel, connection, self.functions, self.function_timeout)
        except StartFailed:
            channel.kill()
            await channel.wait_exit(KILL_WAIT)
            raise
        except BaseException:
            channel.kill()
            raise
        return channel

    # -- observing the stream ----------------------------------------------------------------
    def _refused(self, worker_id: str, reason: str) -> None:
        if worker_id in self._launched.channels:  # a stream naming one of our workers
            self.console.warning(f"refused a stream for worker {worker_id}: {reason}")

    def _on_connection(self, connection: HostConnection) -> None:
        connection.record = False
        channel = self._launched.channels.get(connection.worker_id)
        start = pb.StreamingMessage(
            request_id=connection.start_request_id,
            start_stream=pb.StartStream(worker_id=connection.worker_id),
        )
        self.console.protocol(start, outgoing=False)
        connection.observer = lambda message, outgoing: self._observe(channel, message, outgoing)

    def _observe(
        self, channel: WorkerChannel | None, message: pb.StreamingMessage, outgoing: bool
    ) -> None:
        try:
            self.console.protocol(message, outgoing)
            if outgoing:
                return
            kind, body = betterproto2.which_one_of(message, "content")
            if kind == "rpc_log" and isinstance(body, pb.RpcLog):
                self._print_log(channel, body)
            elif isinstance(body, pb.InvocationResponse) and channel is not None:
                channel.executing.pop(body.invocation_id, None)
                if not channel.executing:
                    channel.idle.set()
        except Exception as exc:  # never break the stream reader
            self.console.error(f"emulator: cannot show a message: {exc!r}")

    def _print_log(self, channel: WorkerChannel | None, log: pb.RpcLog) -> None:
        system = log.log_category == pb.RpcLogRpcLogCategory.System
        function = self._recent.get(log.invocation_id) if log.invocation_id else None
        dropped = None
        if not system:
            executing = channel is not None and log.invocation_id in channel.executing
            if not executing:
                dropped = (
                    "it arrived after the invocation's response"
                    if function is not None
                    else "its invocation_id is not an invocation in flight"
                )
        self.console.rpc_log(log, None if system else function, dropped)

    def _remember(self, invocation_id: str, function: str) -> None:
        self._recent[invocation_id] = function
        while len(self._recent) > _RECENT_INVOCATIONS:
            self._recent.popitem(last=False)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
