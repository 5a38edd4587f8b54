"""One worker process and its stream: started, brought up, read, and ended the way the host
does it. When to start one and what a failure costs is the supervisor's part (`_process`).

- `launch` starts the config's argv (`WorkerConfig.command`) with the worker environment in
  the app root, in its own process group, and pumps its stdout/stderr to the console;
- `handshake` waits for ``StartStream`` (or the process's exit) within
  ``processStartupTimeout`` and has ``WorkerInitRequest`` answered within
  ``initializationTimeout``; `index` asks for the worker's functions
  (``FunctionsMetadataRequest``, 60 s); `load` sends one ``FunctionLoadRequest`` per
  function, disabled ones last, all answered within max(60 s, functionTimeout);
- `WorkerChannel.end` stops a worker on purpose: ``WorkerTerminate`` with a 5 s grace period
  when the worker handles it, then the kill.

The host's code for these steps: src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs,
src/WebJobs.Script/Workers/Rpc/RpcWorkerProcess.cs and
src/WebJobs.Script/Workers/ProcessManagement/DefaultWorkerProcessFactory.cs (paths in
Azure/azure-functions-host). Every wait here is bounded, and no send to a worker raises: its
stream may be over while its process lingers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import os
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import HostConnection, StreamNotOpened, TestHost, WorkerProcess

from ._app import AppError, FunctionSpec, discover_functions, functions_from_metadata
from ._config import HOST_VERSION
from ._console import Console
from ._httpuri import HTTP_URI, HttpUriError, parse_http_uri
from ._launch import WorkerConfig
from ._startup import Line, StartupOutput, exited_before_stream

__all__ = [
    "EXIT_AFTER_STREAM",
    "KILL_WAIT",
    "TERMINATE_GRACE",
    "StartFailed",
    "WorkerChannel",
    "failure_text",
    "handshake",
    "index",
    "launch",
    "load",
    "span",
]

METADATA_TIMEOUT: Final = 60.0
TERMINATE_GRACE: Final = 5.0
KILL_WAIT: Final = 1.0
#: How long a worker whose stream is over may take to exit before it is killed.
EXIT_AFTER_STREAM: Final = 2.0
_STDERR_TAIL: Final = 3


class StartFailed(Exception):
    """The worker could not be brought up (the message says why); a worker error.

    `output` is what the worker printed when it exited before opening its stream (to compare
    the next start's output with), else None.
    """

    def __init__(
        self, message: str, output: list[Line] | None = None, explanation: str | None = None
    ) -> None:
        super().__init__(message)
        self.output = output
        #: The whole story when the message is short (the same error again): for giving up.
        self.explanation = explanation or message


@dataclass
class WorkerChannel:
    """One worker process and its stream."""

    process: asyncio.subprocess.Process
    worker_id: str
    console: Console
    #: The process as `TestHost.launch` started it (`process` is its `process`).
    worker: WorkerProcess
    connection: HostConnection | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)
    executing: dict[str, str] = field(default_factory=dict)
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_STDERR_TAIL)
    )
    #: Why the emulator ended this worker on purpose (restart after a timeout, shutdown).
    ended_on_purpose: str | None = None
    #: WorkerTerminate was sent: a second `end` (Ctrl-C during a restart) only waits and kills.
    terminate_sent: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Shows its output; its start-up output is compared with the previous failed start's.
    output: StartupOutput | None = None
    #: The executable as configured (``command[0]``) and where it was found.
    executable: str = ""
    resolved: str | None = None

    @property
    def pumps(self) -> list[asyncio.Task[None]]:
        """The tasks showing its stdout and stderr; done once both pipes are closed."""
        return self.worker.pumps

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

    async def end(self, reason: str, *, grace: float) -> None:
        """Stop the worker on purpose: WorkerTerminate (if handled) with `grace`, then kill.

        Never raises for the worker's sake and never waits longer than `grace` plus
        `KILL_WAIT`: the stream may be over already (a worker that ended it and lingers, or a
        second `end` while a restart is under way), or the worker may not read it.
        """
        self.ended_on_purpose = self.ended_on_purpose or reason
        try:
            if self.process.returncode is not None:
                return
            connection = self.connection
            if connection is not None and self.handles("HandlesWorkerTerminateMessage"):
                if connection.closed:  # a worker exits (1) as soon as its stream is over
                    grace = min(grace, EXIT_AFTER_STREAM)
                elif not self.terminate_sent:
                    self.terminate_sent = True
                    await self.send_quietly("WorkerTerminate", connection.terminate(grace), grace)
                await self.wait_exit(grace)
        finally:
            self.kill()  # a no-op once it has exited; also when cancelled meanwhile
        await self.wait_exit(KILL_WAIT)

    async def send_quietly(
        self, what: str, send: Coroutine[Any, Any, None], timeout: float
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
                f"Could not send {what} to worker pid {self.process.pid} within"
                f" {timeout:g} s (it does not read its stream)."
            )
        except Exception as exc:
            if self.console.verbose:
                self.console.info(
                    f"Could not send {what} to worker pid {self.process.pid}: {exc!r}"
                )


async def launch(
    host: TestHost,
    config: WorkerConfig,
    *,
    app_dir: Path,
    environment: Mapping[str, str],
    console: Console,
    register: Callable[[WorkerChannel], None],
    previous: Sequence[Line] | None = None,
) -> WorkerChannel:
    """Start a worker process with the host's command line and pump its output.

    `register` sees the channel before the worker can dial (its stream is matched to it).
    `previous` is the output of the previous start when that one exited before opening its
    stream: the same output again is not shown twice (`StartupOutput`).

    Raises:
        StartFailed: the executable is missing or cannot be started.
    """
    args = host.host_args()
    argv = config.command(args, app_dir=app_dir)
    env = config.environment(app_dir, environment)
    resolved = config.resolve_executable(argv, env)
    if resolved is None:
        raise StartFailed(
            f"cannot start the worker: executable {argv[0]!r} was not found. Set"
            f" defaultExecutablePath in {config.path}, or"
            f" languageWorkers__{config.language}__defaultExecutablePath (an app setting in"
            ' local.settings.json "Values", or an environment variable).'
        )
    if console.verbose:
        console.info("Starting worker: " + " ".join(argv))
    show = StartupOutput(
        console,
        errors_only=config.use_stderr_for_errors_only,
        previous=previous,
        worker=f"{config.language}.{args.worker_id}",
    )
    try:
        worker = await host.launch(
            args=args,
            argv=argv,
            cwd=app_dir,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the emulator, which terminates the worker
            on_output=show,
        )
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL in a setting's value
        raise StartFailed(f"cannot start the worker {argv[0]!r}: {exc}") from None
    channel = WorkerChannel(
        worker.process,
        args.worker_id,
        console,
        worker,
        stderr_tail=show.stderr_tail,
        output=show,
        executable=argv[0],
        resolved=resolved,
    )
    channel.idle.set()
    register(channel)
    return channel


async def handshake(
    channel: WorkerChannel, host: TestHost, config: WorkerConfig, *, app_dir: Path
) -> HostConnection:
    """Wait for the worker's ``StartStream``, then initialize it; its stream.

    Raises:
        StartFailed: the worker exited first, or a step failed or timed out.
    """
    console = channel.console
    try:
        # A refused stream (a stray one naming this worker) is not the worker's: wait on.
        connection = await host.wait_for_stream(
            channel.worker, config.startup_timeout, refusals_fail=False
        )
    except StreamNotOpened as exc:
        output = channel.output
        if exc.reason == "exited" and output is not None:  # its output is all read by now
            repeated = output.exited()
            message, explanation = exited_before_stream(
                code=exc.returncode,
                executable=channel.executable,
                resolved=channel.resolved,
                language=config.language,
                output=output.lines,
                repeated=repeated,
            )
            raise StartFailed(message, output.record, explanation) from None
        if output is not None:
            output.release()
        raise StartFailed(
            f"no StartStream within {span(config.startup_timeout)} (processStartupTimeout)"
        ) from None
    if channel.output is not None:
        channel.output.opened()
    channel.connection = connection
    try:
        init = await connection.init(
            function_app_directory=str(app_dir),
            worker_directory=str(config.worker_directory),
            capabilities={"MultiStream": "10"},
            host_version=HOST_VERSION,
            timeout=config.init_timeout,
        )
    except TimeoutError:
        raise StartFailed(
            f"no WorkerInitResponse within {span(config.init_timeout)}"
            " (initializationTimeout in worker.config.json processOptions)"
        ) from None
    except ConnectionError:
        raise StartFailed("the worker ended its stream during init") from None
    if init.result is None or init.result.status != pb.StatusResultStatus.Success:
        raise StartFailed(f"init failed: {failure_text(init.result)}")
    channel.capabilities = dict(init.capabilities)
    metadata = init.worker_metadata
    runtime = (
        f" ({metadata.runtime_name} {metadata.runtime_version})".replace(" )", ")")
        if (metadata is not None and metadata.runtime_name)
        else ""
    )
    console.info(f"Worker process started and initialized: pid {channel.process.pid}{runtime}.")
    _check_capabilities(channel)
    return connection


def _check_capabilities(channel: WorkerChannel) -> None:
    """What the host makes of the capabilities at init.

    Raises:
        StartFailed: an ``HttpUri`` that is no absolute URI (``new Uri`` throws in
            ``GrpcWorkerChannel.ApplyCapabilities``, a worker error).
    """
    uri = channel.capabilities.get(HTTP_URI)
    if uri:
        try:
            parse_http_uri(uri)
        except HttpUriError as exc:
            if exc.invalid:
                raise StartFailed(f"{exc}: the host counts that as a worker error") from None
            channel.console.error(f"{exc}. Its HTTP functions are answered 500, uninvoked.")
        else:
            channel.console.info(
                f"Worker pid {channel.process.pid} serves HTTP at {uri} (HttpUri): HTTP requests"
                " for it are forwarded there."
            )
    if channel.capabilities.get("SupportsLoadResponseCollection"):
        # The host waits for one FunctionLoadResponseCollection per function but only the
        # last wait has a timeout; the single collection reply leaves the others pending
        # until they fail the worker (SendFunctionLoadRequests in GrpcWorkerChannel.cs).
        channel.console.warning(
            "The worker declares SupportsLoadResponseCollection: the real host mishandles it"
            " for two or more functions (it waits for one collection reply per function and"
            " fails the worker when the others never come); the emulator sends single loads."
        )


async def index(
    connection: HostConnection, config: WorkerConfig, *, app_dir: Path, console: Console
) -> tuple[list[FunctionSpec], list[AppError]]:
    """Worker indexing: the functions the worker reports, or the app's ``function.json``
    ones when it asks for host indexing; with the invalid ones as errors.

    Raises:
        StartFailed: no answer in time, or the stream ended.
    """
    try:
        response = await connection.functions_metadata(str(app_dir), timeout=METADATA_TIMEOUT)
    except TimeoutError:
        raise StartFailed(f"no FunctionMetadataResponse within {span(METADATA_TIMEOUT)}") from None
    except ConnectionError:
        raise StartFailed("the worker ended its stream during worker indexing") from None
    if response.result is not None and response.result.status != pb.StatusResultStatus.Success:
        console.warning(f"Worker indexing reported a failure: {failure_text(response.result)}")
    if response.use_default_metadata_indexing:
        console.info("The worker asked for host indexing (use_default_metadata_indexing).")
        return discover_functions(app_dir, config.extensions)
    return functions_from_metadata(response.function_metadata_results, app_dir)


async def load(
    channel: WorkerChannel,
    connection: HostConnection,
    functions: Sequence[FunctionSpec],
    function_timeout: float | None,
) -> None:
    """Load every function, disabled ones last; a refused load is recorded on the channel
    (its invocations fail), not raised.

    Raises:
        StartFailed: not every load was answered in time, or the stream ended.
    """
    ordered = [f for f in functions if not f.disabled] + [f for f in functions if f.disabled]
    timeout = None if function_timeout is None else max(60.0, function_timeout)

    async def load_one(spec: FunctionSpec) -> None:
        reply = await connection.send_load(spec.load_request(), timeout=None)
        if reply.result is None or reply.result.status != pb.StatusResultStatus.Success:
            error = failure_text(reply.result)
            channel.load_errors[spec.function_id] = error
            channel.console.error(
                f"Worker failed to load function: '{spec.name}' with functionId:"
                f" '{spec.function_id}'. {error}"
            )

    try:
        await asyncio.wait_for(asyncio.gather(*(load_one(f) for f in ordered)), timeout)
    except TimeoutError:
        raise StartFailed(
            f"not every FunctionLoadRequest was answered within {span(timeout)}"
        ) from None
    except ConnectionError:
        raise StartFailed("the worker ended its stream while loading functions") from None


def failure_text(result: pb.StatusResult | None) -> str:
    """What a failed (or cancelled) `StatusResult` says, with its stack trace."""
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


def span(seconds: float | None) -> str:
    """A duration as the host prints a TimeSpan (``0:01:00``), or "unbounded"."""
    if seconds is None:
        return "unbounded"
    return str(datetime.timedelta(seconds=round(seconds, 3)))
