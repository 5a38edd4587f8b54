"""The worker process: launch, handshake, load, invoke, restart, terminate — as the host does.

`Supervisor` owns the gRPC side (a `workerkit.testing.TestHost` on 127.0.0.1, free port) and
one worker process at a time. The host's rules it follows (HOST_PROTOCOL §1, §3):

- launch with the config's argv (`WorkerConfig.command`), the worker environment, cwd = app
  root; ``StartStream`` within ``processStartupTimeout``; ``WorkerInitRequest`` answered
  within ``initializationTimeout``; with worker indexing, ``FunctionsMetadataRequest`` to the
  first worker only (60 s); one ``FunctionLoadRequest`` per function, disabled ones last, all
  answered within max(60 s, functionTimeout);
- a worker error (non-zero exit other than 200, a handshake timeout or failure, a stream that
  ends while the process lives on) fails the invocations in flight and restarts the worker;
  the third error within 30 minutes gives up (the host stops). Restarts are spaced by
  ``processRestartInterval``. Exit 200 restarts without counting; exit 0 unasked gives up at
  once, because the host would neither restart nor notice it;
- an invocation past the function timeout is cancelled (``InvocationCancel`` when the worker
  handles it); if it still has not answered 2 s later the worker is restarted (not counted);
- stopping drains invocations for ``processShutdownTimeout``, then sends ``WorkerTerminate``
  (5 s grace, when the worker handles it) and kills the process if it is still running.

Every wait is bounded and no send to a worker raises (its stream may be over while its
process lingers). Whatever happens, stopping kills every worker this supervisor started that
still runs, with its process group (each worker leads its own).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import os
import signal
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import HostConnection, TestHost

from ._app import AppError, FunctionSpec, discover_functions, functions_from_metadata
from ._config import HOST_VERSION, WorkerConfig
from ._console import Console
from ._peer import launched_by

__all__ = [
    "InputBuilder",
    "InvocationOutcome",
    "Supervisor",
    "SupervisorError",
    "disabled_by_settings",
]

METADATA_TIMEOUT: Final = 60.0
TERMINATE_GRACE: Final = 5.0
KILL_WAIT: Final = 1.0
#: How long a worker whose stream is over may take to exit before it is killed.
EXIT_AFTER_STREAM: Final = 2.0
#: After a timed-out invocation is cancelled, how long it may take before the worker restarts.
TIMEOUT_GRACE: Final = 2.0
ERROR_THRESHOLD: Final = 3
ERROR_WINDOW: Final = 30 * 60.0
_RECENT_INVOCATIONS: Final = 4096
_STDERR_TAIL: Final = 3


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

    Exactly one of: `response` with a Success result; `error` (the failure text shown to
    the user); `timed_out` (with `error` describing it).
    """

    invocation_id: str
    function: FunctionSpec
    response: pb.InvocationResponse | None = None
    error: str | None = None
    timed_out: bool = False
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        """The worker answered with status Success."""
        return self.error is None and self.response is not None


class _StartFailed(Exception):
    pass


@dataclass
class _Channel:
    """One worker process and its stream."""

    process: asyncio.subprocess.Process
    worker_id: str
    connection: HostConnection | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)
    executing: dict[str, str] = field(default_factory=dict)
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_STDERR_TAIL)
    )
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    #: Why the emulator ended this worker on purpose (restart after a timeout, shutdown).
    ended_on_purpose: str | None = None
    #: WorkerTerminate was sent: a second `_end` (Ctrl-C during a restart) only waits and kills.
    terminate_sent: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def handles(self, capability: str) -> bool:
        return bool(self.capabilities.get(capability))

    async def wait_exit(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout)
        except TimeoutError:
            return None

    def kill(self) -> None:
        """Kill the worker and what it started in its process group (it leads its own:
        ``start_new_session``), as the host's job object does on Windows
        (src/WebJobs.Script/Workers/ProcessManagement/JobObjectRegistry.cs); never raises.
        Only while the worker has not been reaped: its id cannot name another group then."""
        if self.process.returncode is not None:
            return
        killpg = getattr(os, "killpg", None)
        if killpg is not None:
            with contextlib.suppress(OSError):
                killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # ProcessLookupError: it is gone already
            self.process.kill()


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
        self._host = TestHost(
            on_connection=self._on_connection,
            check_peer=self._check_peer,
            on_refused=self._refused,
        )
        self._channel: _Channel | None = None
        self._channels: dict[str, _Channel] = {}
        self._ready = asyncio.Event()
        self._gave_up = asyncio.Event()
        self._first_ready: asyncio.Future[None] | None = None  # set by start()
        self.failure: str | None = None
        self._stopping = False
        self._errors: list[float] = []
        self._last_start: float | None = None
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
    def grpc_port(self) -> int:
        """The port of the gRPC server the worker dials."""
        return self._host.port

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
                await self._end(channel, "the host is shutting down", grace=grace)
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
        for channel in list(self._channels.values()):
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
                f"Timeout value of {_span(timeout)} was exceeded by function:"
                f" Functions.{function.name}"
            )
            if pending is not None:
                self._spawn(self._after_timeout(channel, invocation_id, pending.future))
        except (ConnectionError, OSError) as exc:
            outcome.error = await self._lost_reason(channel, exc)
        else:
            result = response.result
            if result is not None and result.status == pb.StatusResultStatus.Success:
                outcome.response = response
            else:
                outcome.response = response
                outcome.error = _failure_text(result)
        finally:
            channel.executing.pop(invocation_id, None)
            if not channel.executing:
                channel.idle.set()
        outcome.duration = loop.time() - started
        return outcome

    async def _ready_channel(self, timeout: float | None) -> _Channel:
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
        self, channel: _Channel, invocation_id: str, response: asyncio.Future[pb.InvocationResponse]
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
            await self._send_quietly(
                channel, "InvocationCancel", connection.cancel(invocation_id), TIMEOUT_GRACE
            )
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(response), TIMEOUT_GRACE)
        if response.done() or self._stopping or channel is not self._channel:
            return
        self.console.warning(
            "A function timeout has occurred. Restarting worker process executing"
            f" invocationId '{invocation_id}'."
        )
        await self._end(channel, f"invocation {invocation_id} timed out", grace=TERMINATE_GRACE)

    async def _lost_reason(self, channel: _Channel, exc: BaseException) -> str:
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
        while not self._stopping:
            if self._last_start is not None:
                wait = self._last_start + self.config.restart_interval - loop.time()
                if wait > 0:
                    self.console.info(
                        f"Restarting the worker in {wait:.1f} s (processRestartInterval)."
                    )
                    await asyncio.sleep(wait)
            self._last_start = loop.time()
            try:
                channel = await self._start_channel()
            except _StartFailed as failure:
                if self._stopping:
                    return
                self.console.error(f"Worker start failed: {failure}")
                if not self._count_error(str(failure)):
                    return
                continue
            self._channel = channel
            self._ready.set()
            if self._first_ready is not None and not self._first_ready.done():
                self._first_ready.set_result(None)
            message, counts = await self._watch(channel)
            self._ready.clear()
            self._channel = None
            self._channels.pop(channel.worker_id, None)
            if self._stopping:
                return
            if message is None:  # exit 0 unasked
                return
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
                f"the worker failed {len(self._errors)} times; like the host, the emulator"
                f" stops here. Last error: {message}"
            )
            return False
        return True

    def _give_up(self, message: str) -> None:
        self.failure = message
        self._gave_up.set()

    async def _watch(self, channel: _Channel) -> tuple[str | None, bool]:
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
                " restart such a worker and its invocations would hang (HOST_PROTOCOL §1.5):"
                " exit non-zero on errors, or 200 to ask for a restart." + tail
            )
            return None, False
        if code == 200:
            return (
                "The worker exited with status 200: restarting it (not counted as an error).",
                False,
            )
        return f"Language Worker Process exited with status {code}.{tail}", True

    async def _end(self, channel: _Channel, reason: str, *, grace: float) -> None:
        """Stop `channel` on purpose: WorkerTerminate (if handled) with `grace`, then kill.

        Never raises for the worker's sake and never waits longer than `grace` plus
        `KILL_WAIT`: the stream may be over already (a worker that ended it and lingers, or a
        second `_end` while a restart is under way), or the worker may not read it.
        """
        channel.ended_on_purpose = channel.ended_on_purpose or reason
        try:
            if channel.process.returncode is not None:
                return
            connection = channel.connection
            if connection is not None and channel.handles("HandlesWorkerTerminateMessage"):
                if connection.closed:  # a worker exits (1) as soon as its stream is over
                    grace = min(grace, EXIT_AFTER_STREAM)
                elif not channel.terminate_sent:
                    channel.terminate_sent = True
                    await self._send_quietly(
                        channel, "WorkerTerminate", connection.terminate(grace), grace
                    )
                await channel.wait_exit(grace)
        finally:
            channel.kill()  # a no-op once it has exited; also when cancelled meanwhile
        await channel.wait_exit(KILL_WAIT)

    async def _send_quietly(
        self, channel: _Channel, what: str, send: Coroutine[Any, Any, None], timeout: float
    ) -> None:
        """Send a request to the worker within `timeout` seconds (a worker that stops
        reading blocks a send for ever through flow control); a stream already over, or
        any other failure to send, is noted, not raised (h2's StreamClosedError is neither
        a ConnectionError nor an OSError)."""
        try:
            await asyncio.wait_for(send, timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.console.warning(
                f"Could not send {what} to worker pid {channel.process.pid} within"
                f" {timeout:g} s (it does not read its stream)."
            )
        except Exception as exc:
            if self.console.verbose:
                self.console.info(
                    f"Could not send {what} to worker pid {channel.process.pid}: {exc!r}"
                )

    # -- starting a worker -------------------------------------------------------------------
    async def _start_channel(self) -> _Channel:
        args = self._host.host_args()
        argv = self.config.command(args, app_dir=self.app_dir)
        env = self.config.environment(self.app_dir, self.environment)
        if self.config.resolve_executable(argv, env) is None:
            raise _StartFailed(
                f"cannot start the worker: executable {argv[0]!r} was not found"
                " (set defaultExecutablePath, or the languageWorkers:"
                f"{self.config.language}:defaultExecutablePath setting)"
            )
        if self.console.verbose:
            self.console.info("Starting worker: " + " ".join(argv))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.app_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the emulator, which terminates the worker
            )
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL in a setting's value
            raise _StartFailed(f"cannot start the worker {argv[0]!r}: {exc}") from None
        channel = _Channel(process, args.worker_id)
        channel.idle.set()
        self._channels[args.worker_id] = channel
        channel.pumps = [
            asyncio.create_task(self._pump(channel, process.stdout, stderr=False)),
            asyncio.create_task(self._pump(channel, process.stderr, stderr=True)),
        ]
        try:
            await self._handshake(channel)
        except _StartFailed:
            channel.kill()
            await channel.wait_exit(KILL_WAIT)
            raise
        except BaseException:
            channel.kill()
            raise
        return channel

    async def _handshake(self, channel: _Channel) -> None:
        config = self.config
        waiter = asyncio.create_task(self._host.connection(channel.worker_id, None))
        exited = asyncio.create_task(channel.process.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, exited},
                timeout=config.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            exited.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter not in done:
            if exited in done or channel.process.returncode is not None:
                await asyncio.sleep(0.1)  # let the pumps print its last words
                raise _StartFailed(
                    f"the worker exited with status {channel.process.returncode} before opening"
                    " its stream" + "".join(f"\n  {line}" for line in channel.stderr_tail)
                )
            raise _StartFailed(
                f"no StartStream within {_span(config.startup_timeout)} (processStartupTimeout)"
            )
        connection = waiter.result()
        channel.connection = connection
        try:
            init = await connection.init(
                function_app_directory=str(self.app_dir),
                worker_directory=str(config.worker_directory),
                capabilities={"MultiStream": "10"},
                host_version=HOST_VERSION,
                timeout=config.init_timeout,
            )
        except TimeoutError:
            raise _StartFailed(
                f"no WorkerInitResponse within {_span(config.init_timeout)}"
                " (initializationTimeout in worker.config.json processOptions)"
            ) from None
        except ConnectionError:
            raise _StartFailed("the worker ended its stream during init") from None
        if init.result is None or init.result.status != pb.StatusResultStatus.Success:
            raise _StartFailed(f"init failed: {_failure_text(init.result)}")
        channel.capabilities = dict(init.capabilities)
        metadata = init.worker_metadata
        runtime = (
            f" ({metadata.runtime_name} {metadata.runtime_version})".replace(" )", ")")
            if (metadata is not None and metadata.runtime_name)
            else ""
        )
        self.console.info(
            f"Worker process started and initialized: pid {channel.process.pid}{runtime}."
        )
        self._check_capabilities(channel)
        if not self._indexed:
            await self._index(connection)
        await self._load(channel, connection)

    def _check_capabilities(self, channel: _Channel) -> None:
        uri = channel.capabilities.get("HttpUri")
        if uri:
            self.console.warning(
                f"The worker declares HttpUri {uri!r}: HTTP proxying is not emulated; HTTP"
                " triggers are sent as RpcHttp invocations."
            )
        if channel.capabilities.get("SupportsLoadResponseCollection"):
            self.console.warning(
                "The worker declares SupportsLoadResponseCollection: the real host mishandles"
                " it for two or more functions (HOST_PROTOCOL §4); the emulator sends single loads."
            )

    async def _index(self, connection: HostConnection) -> None:
        try:
            response = await connection.functions_metadata(
                str(self.app_dir), timeout=METADATA_TIMEOUT
            )
        except TimeoutError:
            raise _StartFailed(
                f"no FunctionMetadataResponse within {_span(METADATA_TIMEOUT)}"
            ) from None
        except ConnectionError:
            raise _StartFailed("the worker ended its stream during worker indexing") from None
        if response.result is not None and response.result.status != pb.StatusResultStatus.Success:
            self.console.warning(
                f"Worker indexing reported a failure: {_failure_text(response.result)}"
            )
        if response.use_default_metadata_indexing:
            self.console.info("The worker asked for host indexing (use_default_metadata_indexing).")
            functions, errors = discover_functions(self.app_dir, self.config.extensions)
        else:
            functions, errors = functions_from_metadata(
                response.function_metadata_results, self.app_dir
            )
        self.functions = self._prepare(functions)
        self.function_errors = errors
        self._indexed = True

    async def _load(self, channel: _Channel, connection: HostConnection) -> None:
        ordered = [f for f in self.functions if not f.disabled] + [
            f for f in self.functions if f.disabled
        ]
        timeout = None if self.function_timeout is None else max(60.0, self.function_timeout)

        async def load_one(spec: FunctionSpec) -> None:
            reply = await connection.send_load(spec.load_request(), timeout=None)
            if reply.result is None or reply.result.status != pb.StatusResultStatus.Success:
                error = _failure_text(reply.result)
                channel.load_errors[spec.function_id] = error
                self.console.error(
                    f"Worker failed to load function: '{spec.name}' with functionId:"
                    f" '{spec.function_id}'. {error}"
                )

        try:
            await asyncio.wait_for(asyncio.gather(*(load_one(f) for f in ordered)), timeout)
        except TimeoutError:
            raise _StartFailed(
                f"not every FunctionLoadRequest was answered within {_span(timeout)}"
            ) from None
        except ConnectionError:
            raise _StartFailed("the worker ended its stream while loading functions") from None

    # -- observing the stream ----------------------------------------------------------------
    def _check_peer(self, worker_id: str, peer: tuple[str, int] | None) -> str | None:
        """Refuse a stream that does not come from the worker process started for
        `worker_id`: its id is readable by any local process (the real host accepts the
        first stream naming it; see `_peer`)."""
        channel = self._channels.get(worker_id)
        if channel is None or peer is None:
            return None
        if launched_by(channel.process.pid, peer[1], self._host.port) is False:
            return (
                f"it does not come from the worker process (pid {channel.process.pid}), but"
                f" from port {peer[1]}"
            )
        return None

    def _refused(self, worker_id: str, reason: str) -> None:
        if worker_id in self._channels:  # a stream naming one of our workers
            self.console.warning(f"refused a stream for worker {worker_id}: {reason}")

    def _on_connection(self, connection: HostConnection) -> None:
        connection.record = False
        channel = self._channels.get(connection.worker_id)
        start = pb.StreamingMessage(
            request_id=connection.start_request_id,
            start_stream=pb.StartStream(worker_id=connection.worker_id),
        )
        self.console.protocol(start, outgoing=False)
        connection.observer = lambda message, outgoing: self._observe(channel, message, outgoing)

    def _observe(
        self, channel: _Channel | None, message: pb.StreamingMessage, outgoing: bool
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

    def _print_log(self, channel: _Channel | None, log: pb.RpcLog) -> None:
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

    async def _pump(
        self, channel: _Channel, source: asyncio.StreamReader | None, *, stderr: bool
    ) -> None:
        if source is None:
            return
        pending = b""
        errors_only = self.config.use_stderr_for_errors_only
        while chunk := await source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > 65536:  # a very long line: show it in pieces
                lines.append(pending)
                pending = b""
            for raw in lines:
                text = raw.decode(errors="replace").rstrip("\r")
                if stderr:
                    channel.stderr_tail.append(text)
                self.console.worker_output(text, stderr=stderr, errors_only=errors_only)
        if pending:
            text = pending.decode(errors="replace")
            if stderr:
                channel.stderr_tail.append(text)
            self.console.worker_output(text, stderr=stderr, errors_only=errors_only)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def disabled_by_settings(
    functions: Sequence[FunctionSpec], settings: Mapping[str, str]
) -> list[FunctionSpec]:
    """Apply the ``AzureWebJobs.<name>.Disabled`` app settings (``true`` or ``1``)."""
    lowered = {k.lower(): v for k, v in settings.items()}
    out = []
    for spec in functions:
        value = lowered.get(f"azurewebjobs.{spec.name.lower()}.disabled", "")
        if value.strip().lower() in ("true", "1"):
            spec = replace(spec, disabled=True)
        out.append(spec)
    return out


def _failure_text(result: pb.StatusResult | None) -> str:
    if result is None:
        return "the response has no result"
    exception = result.exception
    prefix = "cancelled" if result.status == pb.StatusResultStatus.Cancelled else ""
    if exception is None:
        return prefix or "failed without a message"
    text = exception.message or prefix or "failed without a message"
    if exception.stack_trace:
        text += "\n" + exception.stack_trace.rstrip()
    return text


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "unbounded"
    return str(datetime.timedelta(seconds=round(seconds, 3)))
