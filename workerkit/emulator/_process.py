"""The supervisor of the worker processes: the gRPC side they dial, and running invocations
on them as the host does. Which workers run, when they start and what a failure costs is
`_pool`'s part; starting, handshaking and ending one worker is `_channel`'s.

`Supervisor` owns the gRPC side (a `workerkit.testing.TestHost` on 127.0.0.1, free port) and
a `WorkerPool` of ``processCount`` worker processes. The host's rules it follows here:

- an invocation goes to the worker the pool picks (round robin over the ready ones); with
  none ready (all restarting) it waits for one within the function timeout;
- an invocation past the function timeout is cancelled (``InvocationCancel`` when the worker
  handles it); if it still has not answered 2 s later the worker running it is restarted (not
  counted as an error);
- an HTTP request for a worker that reported ``HttpUri`` is forwarded to it (`_proxy`): the
  forwarding starts just before the ``InvocationRequest`` is sent, the invocation ends once
  both its response and the forwarding have, within the function timeout, which aborts the
  forwarding too;
- stopping drains invocations on every worker for ``processShutdownTimeout``, then sends each
  ``WorkerTerminate`` (5 s grace, when it handles it) and kills those still running;
- with shared-memory data transfer on, large inputs go through map files and outputs come
  back through the worker's (`_sharedmem`).

Whatever happens, stopping kills every worker this supervisor started that still runs, with
its process group (each worker leads its own), and deletes the map files left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._sharedmap import SharedMapError
from workerkit.testing import HostConnection, PendingInvocation, TestHost

from ._app import AppError, FunctionSpec
from ._channel import TERMINATE_GRACE, WorkerChannel, failure_text, span
from ._console import Console
from ._launch import WorkerConfig
from ._logfilter import user_category, worker_channel_category
from ._peer import Launched
from ._pool import SupervisorError, WorkerPool
from ._sharedmem import HostSharedMemory
from ._tracing import invocation_context

if TYPE_CHECKING:
    from ._proxy import ProxiedRequest

__all__ = [
    "InputBuilder",
    "InvocationOutcome",
    "Supervisor",
    "SupervisorError",
]

#: After a timed-out invocation is cancelled, how long it may take before the worker restarts.
TIMEOUT_GRACE: Final = 2.0
_RECENT_INVOCATIONS: Final = 4096


#: Builds an invocation's inputs (name, data; trigger first) and trigger metadata for a worker's
#: capabilities.
InputBuilder = Callable[
    [Mapping[str, str]], tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]
]


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
    #: The worker process that ran it (None: it reached none).
    pid: int | None = None


class Supervisor:
    """Runs the workers for the emulator (module docstring).

    Args:
        config: the worker's configuration (``process_count`` workers are run).
        app_dir: the function app root (the workers' cwd).
        environment: the host environment (app settings merged in) the workers inherit.
        functions: host-indexed functions (ignored with worker indexing); the function
            timeout and disabled settings are applied by the caller.
        function_timeout: seconds, or None for unbounded.
        console: where to print.
        prepare: applied to the functions a worker reports (worker indexing).
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
        self._launched = Launched(lambda: self._host.port)
        self._host = TestHost(
            on_connection=self._on_connection,
            check_peer=self._launched.check,
            on_refused=self._refused,
        )
        self._pool = WorkerPool(
            host=self._host,
            launched=self._launched,
            config=config,
            app_dir=app_dir,
            environment=self.environment,
            functions=list(functions),
            function_timeout=function_timeout,
            console=console,
            prepare=prepare or (lambda specs: specs),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: Large inputs and outputs through map files (`_sharedmem`).
        self.shared_memory = HostSharedMemory(self.environment, console)

    @property
    def functions(self) -> list[FunctionSpec]:
        """The functions (with worker indexing: as the first worker reported them)."""
        return self._pool.functions

    @property
    def function_errors(self) -> list[AppError]:
        """The invalid functions a worker reported (worker indexing)."""
        return self._pool.function_errors

    @property
    def failure(self) -> str | None:
        """Why the supervisor gave up, once it has."""
        return self._pool.failure

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the gRPC server and the workers; return once the first one is ready (the
        others start after it, `_pool`).

        Raises:
            SupervisorError: no worker could be brought up within the error budget.
        """
        self.shared_memory.start()
        await self._host.start()
        await self._pool.start()

    @property
    def capabilities(self) -> Mapping[str, str]:
        """A ready worker's capabilities (empty while none is ready)."""
        ready = self._pool.ready
        return ready[0].capabilities if ready else {}

    def in_flight(self) -> int:
        """Invocations sent to the workers and not answered yet."""
        return sum(len(channel.executing) for channel in self._pool.ready)

    async def wait_failed(self) -> str:
        """Wait until the supervisor gives up; return why."""
        return await self._pool.wait_failed()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the invocations in flight on every worker to be
        answered."""
        busy = [channel for channel in self._pool.ready if channel.executing]
        for channel in busy:
            channel.idle.clear()
        if busy:
            waiters = [asyncio.create_task(channel.idle.wait()) for channel in busy]
            try:
                await asyncio.wait(waiters, timeout=timeout)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def stop(self, *, grace: float = TERMINATE_GRACE) -> None:
        """Terminate every worker (WorkerTerminate, then kill) and close the gRPC server.

        Every wait is bounded, and whatever happens (an error, a cancel) every worker process
        this supervisor started is killed before it returns or raises.
        """
        try:
            await self._pool.stop(grace)
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
        Ctrl-C, and the last step of `stop`), and delete the shared memory maps left;
        never raises."""
        self._pool.kill()
        self.shared_memory.sweep()

    # -- invocations -------------------------------------------------------------------------
    async def invoke(
        self,
        function: FunctionSpec,
        data: InputBuilder,
        *,
        reason: str,
        retry_context: pb.RetryContext | None = None,
        proxy: ProxiedRequest | None = None,
    ) -> InvocationOutcome:
        """Run one invocation on the worker and report how it ended (never raises for it).

        Waits for a ready worker (e.g. during a restart) within the function timeout, then
        calls `data` with that worker's capabilities for the inputs (trigger first) and the
        trigger metadata, so they are shaped for the worker that runs them. `retry_context`
        goes with the request (a function with a retry policy, `_retry`). `proxy` is the HTTP
        request of an HTTP function: forwarded when the worker reported ``HttpUri``, else
        read whole first.

        Raises:
            ForwardRefused: `proxy` is not forwarded (`ProxiedRequest.prepare`); nothing sent.
            Rejected: `proxy`'s body is refused; nothing sent.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        invocation_id = str(uuid.uuid4())
        outcome = InvocationOutcome(invocation_id, function)
        timeout = self.function_timeout
        try:
            channel = await self._pool.ready_channel(timeout)
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
        target = await proxy.prepare(channel.capabilities) if proxy is not None else None
        outcome.pid = channel.process.pid
        # With several worker processes, which one runs it (the host logs the worker id at
        # Trace level only: RpcFunctionInvocationDispatcher.InvokeAsync).
        where = f" on worker pid {outcome.pid}" if self._pool.count > 1 else ""
        self.console.info(
            f"Executing 'Functions.{function.name}' (Reason='{reason}', Id={invocation_id})" + where
        )
        inputs, trigger_metadata = data(channel.capabilities)
        shared = self.shared_memory.enabled(channel.capabilities)
        values: Mapping[str, object] = dict(inputs)
        if shared:
            values = await self.shared_memory.put_inputs(invocation_id, function.bindings, inputs)
        channel.executing[invocation_id] = function.name
        self._remember(invocation_id, function.name)
        # The host starts forwarding before it sends the invocation (SendInvocationRequest).
        forwarding = proxy.start(target, invocation_id) if proxy and target else None
        sending = asyncio.ensure_future(
            connection.start_invocation(
                function.function_id,
                values,
                trigger_metadata=trigger_metadata,
                invocation_id=invocation_id,
                trace_context=invocation_context(),  # the call's trace (_tracing)
                retry_context=retry_context,
            )
        )
        sending.add_done_callback(_retrieved)
        if proxy is not None and forwarding is not None:
            proxy.when_gone(lambda: self._cancel_gone(channel, invocation_id))

        def left() -> float | None:
            return None if timeout is None else max(timeout - (loop.time() - started), 0.001)

        try:
            # The send counts against the timeout too: a worker that stops reading its stream
            # holds it back (flow control). It is shielded, as a message cut short would break
            # the stream, and goes on after a timeout (the host queues its sends).
            pending = await asyncio.wait_for(asyncio.shield(sending), left())
            response = await pending.result(left())
            # InvokeResponse awaits the forwarding (EnsureSuccessfulForwardingAsync).
            forward_error = (
                await asyncio.wait_for(asyncio.shield(forwarding), left()) if forwarding else None
            )
        except TimeoutError:
            outcome.timed_out = True
            outcome.error = (
                f"Timeout value of {span(timeout)} was exceeded by function:"
                f" Functions.{function.name}"
            )
            self._spawn(self._after_timeout(channel, invocation_id, sending))
        except (ConnectionError, OSError) as exc:
            outcome.error = await self._lost_reason(channel, exc)
        else:
            outcome.response = response
            result = response.result
            if forward_error is not None:
                outcome.error = f"Failed to proxy request with ForwarderError: {forward_error}"
            elif result is None or result.status != pb.StatusResultStatus.Success:
                outcome.error = failure_text(result)
            else:  # outputs in the worker's maps are read on success only (GetBindingDataAsync)
                try:
                    outcome.response = await self.shared_memory.read_outputs(response)
                except SharedMapError as exc:
                    outcome.error = f"Cannot read an output from shared memory: {exc}"
            # TryCloseSharedMemoryResources: the inputs' maps freed, the worker's closed.
            self.shared_memory.free_inputs(invocation_id)
            if shared:
                self.shared_memory.close_outputs(response, connection)
        finally:
            if outcome.timed_out:  # the worker may still read them
                self.shared_memory.free_when_answered(invocation_id, sending, connection)
            else:
                self.shared_memory.free_inputs(invocation_id)
            if proxy is not None:
                proxy.abort()  # still forwarding: the invocation ended without it
            channel.executing.pop(invocation_id, None)
            if not channel.executing:
                channel.idle.set()
        outcome.duration = loop.time() - started
        return outcome

    async def _after_timeout(
        self,
        channel: WorkerChannel,
        invocation_id: str,
        sending: asyncio.Future[PendingInvocation],
    ) -> None:
        """What the host does after a function timeout: cancel the invocation, give it
        `TIMEOUT_GRACE` to be answered, and restart the worker only if it is still executing
        it then (src/WebJobs.Script.WebHost/WebScriptHostExceptionHandler.cs,
        OnTimeoutExceptionAsync; RpcFunctionInvocationDispatcher.cs,
        RestartWorkerWithInvocationIdAsync). A worker that answers Cancelled in time is kept;
        one still not reading the invocation (`sending` not done) is restarted.

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
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, asyncio.CancelledError):
            async with asyncio.timeout(TIMEOUT_GRACE):  # still being sent, or sent
                pending = await asyncio.shield(sending)
                await asyncio.shield(pending.future)
        if _settled(sending) or self._pool.stopping or channel not in self._pool.ready:
            return
        self.console.warning(
            "A function timeout has occurred. Restarting worker process executing"
            f" invocationId '{invocation_id}'."
        )
        await self._pool.retire(channel, f"invocation {invocation_id} timed out", TERMINATE_GRACE)

    def _cancel_gone(self, channel: WorkerChannel, invocation_id: str) -> None:
        """The client of a forwarded request went away: its token cancels the invocation
        (``InvocationCancel`` to a worker that handles it)."""
        connection = channel.connection
        if channel.handles("HandlesInvocationCancelMessage") and connection is not None:
            self._spawn(
                channel.send_quietly(
                    "InvocationCancel", connection.cancel(invocation_id), TIMEOUT_GRACE
                )
            )

    async def _lost_reason(self, channel: WorkerChannel, exc: BaseException) -> str:
        code = await channel.wait_exit(2.0)
        if channel.ended_on_purpose:
            return f"the worker was stopped ({channel.ended_on_purpose}) during the invocation"
        if code is not None:
            return f"the worker process exited with status {code} during the invocation"
        return f"the worker's stream ended during the invocation ({exc})"

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
        if system:
            worker = channel.worker_id if channel is not None else "?"
            category = worker_channel_category(self.config.language, worker)
        else:
            category = user_category(function or "?")
            executing = channel is not None and log.invocation_id in channel.executing
            if not executing:
                dropped = (
                    "it arrived after the invocation's response"
                    if function is not None
                    else "its invocation_id is not an invocation in flight"
                )
        self.console.rpc_log(log, None if system else function, dropped, category=category)

    def _remember(self, invocation_id: str, function: str) -> None:
        self._recent[invocation_id] = function
        while len(self._recent) > _RECENT_INVOCATIONS:
            self._recent.popitem(last=False)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _retrieved(future: asyncio.Future[PendingInvocation]) -> None:
    """Mark a send's failure as seen: the invocation reported it, or had timed out."""
    if not future.cancelled():
        future.exception()


def _settled(sending: asyncio.Future[PendingInvocation]) -> bool:
    """Whether an invocation needs nothing more from its worker: it was never sent (the
    stream is over), or it was and is answered (or its stream ended meanwhile)."""
    if not sending.done():
        return False
    if sending.cancelled() or sending.exception() is not None:
        return True
    return sending.result().future.done()
