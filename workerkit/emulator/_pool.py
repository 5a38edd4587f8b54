"""The worker processes of a function app, as the host's dispatcher runs them: how many, when
each starts, which one runs an invocation, and what a failure costs. Starting, handshaking
and ending one worker is `_channel`'s part; running invocations is `_process`'s.

The host's rules (Azure/azure-functions-host,
src/WebJobs.Script/Workers/Rpc/FunctionRegistration/RpcFunctionInvocationDispatcher.cs and
RpcFunctionInvocationDispatcherLoadBalancer.cs):

- **How many**: ``processCount`` worker processes (``WorkerConfig.process_count``: the
  config's ``processOptions``, or ``FUNCTIONS_WORKER_PROCESS_COUNT``).
- **When**: one after another (``StartWorkerProcesses``): each start waits for the worker to
  be initialized, then ``processStartupInterval`` (10 s by default) passes before the next
  one starts. With worker indexing the first worker, the one asked for the functions, is
  already running when the dispatcher starts the others, so the second starts at once and the
  interval comes after it. The first ready worker takes invocations at once; a start that
  fails goes to the restart rules below and the next worker starts without the interval.
- **Which one**: round robin over the workers ready at that moment
  (``GetLanguageWorkerChannel``: a single ready worker gets everything; with several, a
  counter incremented per invocation, modulo their number, so the first pick is the second
  worker). Not the least busy one: a slow invocation does not divert the next.
- **Failures**: a worker that fails (a non-zero exit other than 200, a handshake timeout or
  failure, a stream that ends while the process lives on) fails only its own invocations in
  flight and is replaced by one new worker. The host keeps **one** error count for all of its
  workers (``AddOrUpdateErrorBucket``, emptied when an error comes more than 30 minutes after
  the last one) and restarts while it is below ``ErrorEventsThreshold``, 3 times the process
  count (``StartWorkerChannel``). Once it is reached a failed worker is not replaced; when no
  worker is left, the host stops ("Exceeded language worker restart retry count"). Restarts
  are one at a time, each followed by ``processRestartInterval`` before the next may begin
  (the host holds a lock for the start and that wait). Exit 200 restarts without counting;
  exit 0 unasked gives up at once, because the host would neither restart nor notice it
  (src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs, ``OnProcessExited``).
- **Indexing**: with worker indexing, only the first worker is asked for its functions; the
  others, and every restarted one, are loaded with the functions it reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from workerkit.testing import TestHost

from ._app import AppError, FunctionSpec
from ._channel import (
    EXIT_AFTER_STREAM,
    KILL_WAIT,
    StartFailed,
    WorkerChannel,
    handshake,
    index,
    launch,
    load,
)
from ._console import Console
from ._launch import WorkerConfig
from ._peer import Launched
from ._startup import Line

__all__ = [
    "ERROR_WINDOW",
    "ErrorBucket",
    "RoundRobin",
    "SupervisorError",
    "WorkerPool",
]

#: WorkerConstants.WorkerRestartErrorIntervalThresholdInMinutes.
ERROR_WINDOW: Final = 30 * 60.0
#: ErrorEventsThreshold per worker process.
ERRORS_PER_PROCESS: Final = 3

T = TypeVar("T")


class SupervisorError(Exception):
    """The emulator cannot go on: the worker cannot be started, or failed too often."""


class ErrorBucket:
    """The host's count of worker errors, shared by all its worker processes."""

    def __init__(self, process_count: int) -> None:
        self.threshold = ERRORS_PER_PROCESS * process_count
        self.errors: list[float] = []

    def add(self, now: float) -> None:
        """An error at `now` (monotonic seconds); older ones are forgotten when it comes more
        than `ERROR_WINDOW` after the last one."""
        if self.errors and now - self.errors[-1] > ERROR_WINDOW:
            self.errors.clear()
        self.errors.append(now)

    @property
    def allows_restart(self) -> bool:
        return len(self.errors) < self.threshold

    @property
    def restarts_left(self) -> int:
        """Restarts after errors still allowed once the one under way is done."""
        return max(self.threshold - 1 - len(self.errors), 0)


class RoundRobin:
    """The host's load balancer: a counter per dispatcher, modulo the ready workers."""

    def __init__(self) -> None:
        self.counter = 0

    def pick(self, ready: Sequence[T]) -> T:
        if not ready:
            raise LookupError("Did not find any initialized language workers")
        if len(ready) == 1:
            return ready[0]
        self.counter += 1
        return ready[self.counter % len(ready)]


class WorkerPool:
    """Runs ``config.process_count`` workers for the supervisor (module docstring).

    Args:
        host: the gRPC side the workers dial.
        launched: the workers started, by worker id (their streams are matched to them).
        config: the worker's configuration.
        app_dir: the function app root (the workers' cwd).
        environment: the host environment the workers inherit.
        functions: host-indexed functions (replaced by the first worker's with worker indexing).
        function_timeout: seconds, or None (bounds the function loads).
        console: where to print.
        prepare: applied to the functions a worker reports (host.json ``functions``, disabled
            settings).
    """

    def __init__(
        self,
        *,
        host: TestHost,
        launched: Launched,
        config: WorkerConfig,
        app_dir: Path,
        environment: dict[str, str],
        functions: list[FunctionSpec],
        function_timeout: float | None,
        console: Console,
        prepare: Callable[[list[FunctionSpec]], list[FunctionSpec]],
    ) -> None:
        self.config = config
        self.count = max(config.process_count, 1)
        self.console = console
        self.functions = functions
        self.function_errors: list[AppError] = []
        #: The workers ready for invocations, in the order they became ready.
        self.ready: list[WorkerChannel] = []
        self.failure: str | None = None
        self.stopping = False
        self._host = host
        self._launched = launched
        self._app_dir = app_dir
        self._environment = environment
        self._function_timeout = function_timeout
        self._prepare = prepare
        self._indexed = asyncio.Event()
        if not config.worker_indexing:
            self._indexed.set()
        self._any_ready = asyncio.Event()
        self._gave_up = asyncio.Event()
        self._halted = asyncio.Event()  # set with `stopping`: wakes `ready_channel`
        self._first_ready: asyncio.Future[None] | None = None
        self._bucket = ErrorBucket(self.count)
        self._balancer = RoundRobin()
        self._restart_lock = asyncio.Lock()
        self._restart_after = 0.0  # monotonic time before which no restart begins
        self._alive: set[int] = set()  # slots with a worker starting or running
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers one after another (in the background); return once the first is
        ready for invocations.

        Raises:
            SupervisorError: no worker could be brought up within the error budget.
        """
        self._first_ready = asyncio.get_running_loop().create_future()
        self._spawn(self._start_all(), "workerkit-host-start-workers")
        gave_up = asyncio.create_task(self._gave_up.wait())
        waiters: set[asyncio.Future[Any]] = {self._first_ready, gave_up}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gave_up.cancel()
        if not self._first_ready.done():
            self._first_ready.cancel()
            raise SupervisorError(self.failure or "the worker could not be started")

    async def wait_failed(self) -> str:
        """Wait until the pool gives up; return why."""
        await self._gave_up.wait()
        return self.failure or "the worker failed"

    async def ready_channel(self, timeout: float | None) -> WorkerChannel:
        """The worker for the next invocation (round robin over the ready ones), waiting for
        one to be ready (a restart) up to `timeout` seconds.

        Raises:
            TimeoutError: none was ready in time.
            SupervisorError: the pool gave up, or is stopping.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.stopping:
                raise SupervisorError("the host is shutting down")
            if self.ready:
                return self._balancer.pick(self.ready)
            if self._gave_up.is_set():
                raise SupervisorError(self.failure or "the worker failed")
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError
            # Woken by a worker becoming ready, the pool giving up, or the host stopping.
            events = (self._any_ready, self._gave_up, self._halted)
            waiters = [asyncio.create_task(event.wait()) for event in events]
            try:
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def stop(self, grace: float) -> None:
        """End every worker (WorkerTerminate with `grace`, then kill, all at once) and the
        supervision; bounded. The caller kills whatever is left (`kill`)."""
        self.stopping = True
        self._halted.set()
        self._any_ready.clear()
        ending = [c.end("the host is shutting down", grace=grace) for c in self.ready]
        self.ready = []
        if ending:
            await asyncio.gather(*ending, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def retire(self, channel: WorkerChannel, reason: str, grace: float) -> None:
        """End a ready worker on purpose (its supervision then replaces it, not counting an
        error); it takes no more invocations from now on, as the host disposes a channel
        before it stops its process (``DisposeAndRestartWorkerChannel``)."""
        self._unready(channel)
        await channel.end(reason, grace=grace)

    def kill(self) -> None:
        """Kill every worker process started that still runs; never raises."""
        self.stopping = True
        self._halted.set()
        for channel in list(self._launched.channels.values()):
            channel.ended_on_purpose = channel.ended_on_purpose or "killed"
            channel.kill()

    # -- starting ----------------------------------------------------------------------------
    async def _start_all(self) -> None:
        """Start the workers one after another, as ``StartWorkerProcesses`` does."""
        started = True
        for slot in range(self.count):
            if slot > 0:
                if not self._indexed.is_set():  # the first worker has yet to report them
                    await self._indexed.wait()
                    started = slot > 1
                if started and self.config.startup_interval > 0:
                    self.console.info(
                        f"Starting worker process {slot + 1} of {self.count} in"
                        f" {self.config.startup_interval:g} s (processStartupInterval)."
                    )
                    await asyncio.sleep(self.config.startup_interval)
                if self.stopping or self._gave_up.is_set():
                    return
            attempted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._alive.add(slot)
            self._spawn(self._run_slot(slot, attempted), f"workerkit-host-worker-{slot + 1}")
            started = await attempted
            # With worker indexing the first worker is running when the others start.
            if slot == 0 and self.config.worker_indexing:
                started = False

    async def _run_slot(self, slot: int, attempted: asyncio.Future[bool]) -> None:
        try:
            await self._supervise(slot, attempted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave start() or the CLI waiting
            self.console.error(f"Worker supervision failed: {exc!r}")
            self._give_up(f"the emulator's worker supervision failed: {exc!r}")
        finally:
            self._alive.discard(slot)
            if not attempted.done():
                attempted.set_result(False)

    async def _supervise(self, slot: int, attempted: asyncio.Future[bool]) -> None:
        """One worker process's life: start it, watch it, replace it when it goes."""
        loop = asyncio.get_running_loop()
        restart: str | None = None  # why the next start is a restart (None: the first start)
        counted = False  # the last worker ended with an error
        failed_output: list[Line] | None = None
        while not self.stopping:
            holding = False  # the restart lock: one restart at a time, spaced (module docstring)
            if restart is not None:
                if not self._bucket.allows_restart:  # StartWorkerChannel
                    self._alive.discard(slot)
                    self._budget_spent(restart)
                    return
                await self._restart_lock.acquire()
                holding = True
            try:
                if restart is not None:
                    wait = self._restart_after - loop.time()
                    self._restarting(slot, restart, wait, counted)
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if self.stopping:
                        return
                try:
                    channel = await self._start_channel(failed_output)
                except StartFailed as failure:
                    if self.stopping:
                        return
                    failed_output = failure.output
                    self.console.error(f"Worker start failed: {failure}")
                    restart, counted = failure.explanation, True
                    if not attempted.done():
                        attempted.set_result(False)
                    self._bucket.add(loop.time())
                    continue
            finally:
                if holding:
                    self._restart_after = loop.time() + self.config.restart_interval
                    self._restart_lock.release()
            failed_output = None
            self._became_ready(channel)
            if not attempted.done():
                attempted.set_result(True)
            message, counts = await self._watch(channel)
            self._gone(channel)
            if self.stopping or message is None:  # message None: exit 0 unasked, gave up
                return
            restart, counted = message, counts
            if counts:
                self.console.error(message)
                self._bucket.add(loop.time())
            else:
                self.console.warning(message)

    def _restarting(self, slot: int, reason: str, wait: float, counted: bool) -> None:
        when = f" in {wait:.1f} s (processRestartInterval)" if wait > 0 else ""
        which = "the worker"
        if self.count > 1:
            which = f"the worker process {slot + 1} of {self.count}"
        if counted:
            left, most = self._bucket.restarts_left, self._bucket.threshold - 1
            self.console.info(
                f"Restarting {which}{when}; {left} of {most} restarts left after this one."
            )
        else:
            self.console.info(f"Restarting {which}{when}.")

    def _became_ready(self, channel: WorkerChannel) -> None:
        self.ready.append(channel)
        self._any_ready.set()
        if self.count > 1:  # which workers take calls, as they join the round robin
            self.console.info(
                f"Worker process pid {channel.process.pid} takes invocations"
                f" ({len(self.ready)} of {self.count} ready)."
            )
        if self._first_ready is not None and not self._first_ready.done():
            self._first_ready.set_result(None)

    def _unready(self, channel: WorkerChannel) -> None:
        """`channel` takes no more invocations."""
        if channel in self.ready:
            self.ready.remove(channel)
        if not self.ready:
            self._any_ready.clear()

    def _gone(self, channel: WorkerChannel) -> None:
        self._unready(channel)
        self._launched.forget(channel.worker_id)

    def _budget_spent(self, message: str) -> None:
        """The error budget is spent and this worker is gone: give up if no other worker
        starts or runs, else say that this one is not replaced."""
        errors = len(self._bucket.errors)
        others = len(self._alive)
        if not others:
            processes = "" if self.count == 1 else f" ({self.count} worker processes)"
            self._give_up(
                f"the worker failed {errors} times within {ERROR_WINDOW / 60:g} minutes:"
                f" giving up after {self._bucket.threshold - 1} restarts{processes}, as the"
                f" host does. Last error: {message}"
            )
            return
        self.console.error(
            f"Not replacing this worker process: {errors} worker errors within"
            f" {ERROR_WINDOW / 60:g} minutes, the host's limit for {self.count} worker"
            f" processes. The other {others} keep running; the host stops once none is left."
        )

    def _give_up(self, message: str) -> None:
        self.failure = message
        self._gave_up.set()

    async def _start_channel(self, previous: list[Line] | None) -> WorkerChannel:
        channel = await launch(
            self._host,
            self.config,
            app_dir=self._app_dir,
            environment=self._environment,
            console=self.console,
            register=self._launched.register,
            previous=previous,
        )
        try:
            connection = await handshake(channel, self._host, self.config, app_dir=self._app_dir)
            if not self._indexed.is_set():  # only the first worker is asked for its functions
                functions, errors = await index(
                    connection, self.config, app_dir=self._app_dir, console=self.console
                )
                self.functions = self._prepare(functions)
                self.function_errors = errors
                self._indexed.set()
            await load(channel, connection, self.functions, self._function_timeout)
        except StartFailed:
            channel.kill()
            await channel.wait_exit(KILL_WAIT)
            self._launched.forget(channel.worker_id)
            raise
        except BaseException:
            channel.kill()
            raise
        return channel

    async def _watch(self, channel: WorkerChannel) -> tuple[str | None, bool]:
        """Wait for the worker to go away; (message, counts as an error). None: it exited 0
        unasked, and the pool gave up."""
        connection = channel.connection
        assert connection is not None
        exited = asyncio.create_task(channel.process.wait())
        closed = asyncio.create_task(connection.wait_closed(None))
        try:
            await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        # No more calls for it while it is seen off (the host disposes the channel on exit).
        self._unready(channel)
        code = channel.process.returncode
        if code is None:
            code = await channel.wait_exit(EXIT_AFTER_STREAM)
        exited.cancel()
        for pump in channel.pumps:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 1.0)
        pid = f" (pid {channel.process.pid})" if self.count > 1 else ""
        if channel.ended_on_purpose:
            channel.kill()
            return f"Worker stopped{pid}: {channel.ended_on_purpose}.", False
        if code is None:
            channel.kill()
            return (
                f"The worker{pid} ended its stream but its process is still running; the real"
                " host would not notice and its invocations would time out. The emulator kills"
                " it. (A worker must exit non-zero when its stream ends.)",
                True,
            )
        tail = "".join(f"\n  {line}" for line in channel.stderr_tail)
        if code == 0:
            self._give_up(
                f"The worker{pid} exited with status 0 without being asked to. The real host"
                " does not restart such a worker and its invocations would hang (it only closes"
                " the process on exit 0: OnProcessExited in"
                " src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs):"
                " exit non-zero on errors, or 200 to ask for a restart." + tail
            )
            return None, False
        if code == 200:
            return (
                f"The worker{pid} exited with status 200: restarting it (not counted as an error).",
                False,
            )
        return f"Language Worker Process exited with status {code}{pid}.{tail}", True

    def _spawn(self, coroutine: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
