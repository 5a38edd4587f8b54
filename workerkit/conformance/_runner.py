"""The machinery under the scenarios of ``workerkit conformance``: worker processes launched
as the host launches them, the requests the scenarios send, and the one way every reply is
awaited and judged (`Runner.expect`). The scenarios themselves are in `._control`,
`._functions` and `._invocations`; their order is in `._check`."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import betterproto2
import grpclib.exceptions
import h2.exceptions

from .._generated import AzureFunctionsRpcMessages as pb
from ..cli import HostArgs
from ..testing import HostConnection, StreamNotOpened, TestHost, WorkerProcess
from ._cases import Case
from ._report import ConformanceOptions, Outcome, ScenarioResult

if TYPE_CHECKING:
    from ..emulator import FunctionSpec

_R = TypeVar("_R")


class Failed(Exception):
    """A check failed; the message is the detail shown in the report."""


class NotRun(Exception):
    """A scenario cannot run; the message says why (reported as skip)."""


@dataclass(eq=False)
class LaunchedWorker:
    """One process of the worker under test, and what the scenarios learnt about its stream."""

    process: WorkerProcess
    args: HostArgs
    conn: HostConnection | None = None
    #: Unmatched replies a scenario already diagnosed (by id()), and late replies to
    #: requests that timed out: neither is reported again by message-rules.
    explained: set[int] = field(default_factory=set)
    timed_out: set[tuple[str, str]] = field(default_factory=set)
    #: 1 for the first worker; a fresh one started after the previous stopped counts up.
    generation: int = 1

    @property
    def returncode(self) -> int | None:
        return self.process.process.returncode

    @property
    def usable(self) -> bool:
        return self.returncode is None and self.conn is not None and not self.conn.closed

    def connection(self) -> HostConnection:
        if self.conn is None:  # pragma: no cover - callers check `usable` first
            raise NotRun("the worker has no stream")
        return self.conn


#: What a scenario concludes: its outcome and the one-line detail of its report row.
Verdict = tuple[Outcome, str]
#: The process a scenario is given: ``"ready"`` one initialised with the app's functions
#: loaded (a fresh one if the last stopped), ``"current"`` the last one as it is, ``"own"`` a
#: process started for it alone (launched, not yet connected; killed after it),
#: ``"placeholder"`` the same started for `Runner.placeholder`.
Needs = Literal["ready", "current", "own", "placeholder"]
#: A scenario: what it does with the runner and the worker it was given.
Step = Callable[["Runner", LaunchedWorker], Awaitable[Verdict]]
#: What `Runner.expect` makes of a reply that did not come: the failure's detail, or (from
#: the replies of that kind that came with another id) a detail or None to let it through.
Missing = str | Callable[[list[Any]], str | None] | None

#: What sending on a stream the worker broke or ended can raise (besides ConnectionError).
_STREAM_ERRORS: Final = (
    h2.exceptions.H2Error,
    grpclib.exceptions.GRPCError,
    grpclib.exceptions.ProtocolError,
    grpclib.exceptions.StreamTerminatedError,
)


def status_name(result: pb.StatusResult) -> str:
    return str(result.status.name)


def no_result(what: str) -> str:
    """The failure of a reply named `what` that carries no `result`."""
    return (
        f"{what} has no result: the host's handler throws on a missing result and "
        "counts it as a failure of the worker"
    )


def checked_result(result: pb.StatusResult | None, what: str) -> pb.StatusResult:
    """`result`, which the reply named `what` must carry; raise `Failed` when it does not."""
    if result is None:
        raise Failed(no_result(what))
    return result


def failure_text(result: pb.StatusResult) -> str:
    exception = result.exception
    message = exception.message.strip() if exception is not None else ""
    return f"{status_name(result)}: {message}" if message else status_name(result)


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Runner:
    """The state shared by the scenarios of one run, and the requests they make."""

    def __init__(
        self,
        host: TestHost,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        worker_dir: str,
        functions: Sequence[FunctionSpec] | None,
        app_errors: Sequence[str],
        cases: Sequence[Case],
        options: ConformanceOptions,
        worker_indexing: bool = False,
        app_warnings: Sequence[str] = (),
        placeholder: tuple[Path, Mapping[str, str]] | None = None,
    ) -> None:
        self.host = host
        self.command = list(command)
        self.cwd = cwd
        self.env = dict(env)
        self.worker_dir = worker_dir
        self.functions = list(functions) if functions is not None else None
        self.app_errors = list(app_errors)
        #: What ``func start`` would warn about the app (an unreadable local.settings.json).
        self.app_warnings = list(app_warnings)
        self.cases = list(cases)
        self.options = options
        self.worker_indexing = worker_indexing
        #: An empty app directory and the environment a worker gets for it: where the host
        #: starts a worker in placeholder mode, before a reload tells it the real app.
        self.placeholder = placeholder
        self.capabilities: dict[str, str] = {}
        self.workers: list[LaunchedWorker] = []
        #: Why no further scenario can run (they are skipped with this reason), if so.
        self.blocked: str | None = None
        #: The worker answered WorkerStatusRequest: `alive` may use it.
        self.status_ok = False
        self.loaded: dict[str, str] = {}  # function name -> "" when loaded, else the failure
        self.current: LaunchedWorker | None = None

    # -- processes ---------------------------------------------------------------------------
    async def launch(self, *, placeholder: bool = False) -> LaunchedWorker:
        """Start the command with the host's argv (not waiting for its StartStream), for the
        app, or with `placeholder` for the placeholder app (`Runner.placeholder`)."""
        cwd, env = self.placeholder if placeholder and self.placeholder else (self.cwd, self.env)
        try:
            process = await self.host.launch(self.command, cwd=cwd, env=env)
        except OSError as exc:
            self.blocked = "the worker could not be started (see start-stream)"
            raise Failed(f"cannot start {self.command[0]!r}: {exc.strerror or exc}") from None
        assert process.args is not None
        worker = LaunchedWorker(process, process.args)
        self.workers.append(worker)
        return worker

    async def connect(self, worker: LaunchedWorker) -> None:
        """Wait for the worker's StartStream; raise `Failed` saying what happened instead."""
        try:
            worker.conn = await self.host.wait_for_stream(
                worker.process, self.options.start_timeout
            )
        except StreamNotOpened as exc:
            if exc.refusal is not None:
                raise Failed(self._refusal(worker, exc.refusal)) from None
            if exc.reason == "exited":
                raise Failed(f"exited before StartStream{await self.exit_note(worker)}") from None
            raise Failed(
                f"no StartStream within {self.options.start_timeout:g} s "
                f"(the host allows 60 s){self.stderr_note(worker)}"
            ) from None

    @staticmethod
    def _refusal(worker: LaunchedWorker, refused: tuple[str, str]) -> str:
        sent_id, kind = refused
        if kind != "start_stream":
            what = f"the first message was {kind or 'empty'}, not StartStream"
        elif not sent_id:
            what = "StartStream had an empty worker_id"
        else:
            what = (
                f"StartStream carried worker id {sent_id!r}, not the --workerId / "
                f"--functions-worker-id {worker.args.worker_id!r}"
            )
        # The host's FunctionRpcService.EventStream returns at once on such a first message.
        return f"{what}: the host ends such a stream at once"

    async def exit_note(self, worker: LaunchedWorker) -> str:
        with contextlib.suppress(TimeoutError):
            await worker.process.wait(2)
        return f" (exit status {worker.returncode}){self.stderr_note(worker)}"

    @staticmethod
    def stderr_note(worker: LaunchedWorker) -> str:
        lines = [
            ln for ln in worker.process.stderr.decode(errors="replace").splitlines() if ln.strip()
        ]
        if not lines:
            return ""
        return "; stderr: " + one_line(" | ".join(lines[-3:]))

    async def kill(self, worker: LaunchedWorker) -> None:
        worker.process.kill()
        with contextlib.suppress(TimeoutError):
            await worker.process.wait(5)

    async def ready(self) -> LaunchedWorker:
        """The current worker if it still serves, else a fresh one: started, initialised and
        with the app's functions loaded (results not reported again)."""
        if self.blocked is not None:
            raise NotRun(f"not run: {self.blocked}")
        if self.current is not None and self.current.usable:
            return self.current
        previous = self.current
        if previous is not None:
            await self.kill(previous)
        worker = await self.launch()
        worker.generation = previous.generation + 1 if previous is not None else 1
        self.current = worker
        try:
            await self.connect(worker)
            await self.init(worker, self.options.init_timeout)
            for spec in self.functions or ():
                await self.load(worker, spec.load_request())
        except (Failed, TimeoutError, ConnectionError) as exc:
            reason = str(exc) or "no reply in time"
            self.blocked = f"a fresh worker (after the previous one stopped) failed: {reason}"
            raise NotRun(f"not run: {self.blocked}") from None
        return worker

    # -- replies -----------------------------------------------------------------------------
    async def expect(
        self,
        worker: LaunchedWorker,
        reply: Awaitable[_R],
        *,
        kind: str,
        key: str = "",
        missing: Missing = None,
    ) -> _R:
        """Await `reply`, a request's answer that gives up after its own timeout.

        When it gives up, a late answer becomes expected (`kind` is its field in
        ``StreamingMessage``, `key` the id it is matched by, ``"*"`` any): message-rules will
        not call it unsolicited. Then `missing` gives the verdict: a text is the detail of a
        `Failed`; a function receives the answers of `kind` that came with another id (from
        then on explained) and returns that detail, or None; None lets the TimeoutError
        through, for callers that judge it themselves.
        """
        try:
            return await reply
        except TimeoutError:
            worker.timed_out.add((kind, key))
            detail = missing(self.unmatched(worker, kind)) if callable(missing) else missing
            if detail is None:
                raise
            raise Failed(detail) from None

    def unmatched(self, worker: LaunchedWorker, kind: str) -> list[Any]:
        """Unmatched replies of `kind` not yet explained; they become explained."""
        found = []
        for message in worker.connection().unmatched:
            name, body = betterproto2.which_one_of(message, "content")
            if name == kind and id(message) not in worker.explained:
                worker.explained.add(id(message))
                found.append(body)
        return found

    # -- requests ----------------------------------------------------------------------------
    async def init(
        self,
        worker: LaunchedWorker,
        timeout: float,
        *,
        missing: Missing = None,
        app_dir: Path | None = None,
    ) -> pb.WorkerInitResponse:
        """WorkerInitRequest for `app_dir` (default: the app)."""
        request = worker.connection().init(
            function_app_directory=str(app_dir or self.cwd),
            worker_directory=self.worker_dir,
            timeout=timeout,
        )
        return await self.expect(worker, request, kind="worker_init_response", missing=missing)

    async def load(
        self, worker: LaunchedWorker, request: pb.FunctionLoadRequest, *, missing: Missing = None
    ) -> pb.FunctionLoadResponse:
        return await self.expect(
            worker,
            worker.connection().send_load(request, timeout=self.options.timeout),
            kind="function_load_response",
            key=request.function_id,
            missing=missing,
        )

    async def invoke(
        self,
        worker: LaunchedWorker,
        function_id: str,
        inputs: Mapping[str, pb.TypedData] | None = None,
        *,
        trigger_metadata: Mapping[str, pb.TypedData] | None = None,
        timeout: float | None = None,
        cancel_after: float | None = None,
        missing: str | None = None,
    ) -> pb.InvocationResponse:
        """Invoke and await the response; one that comes with another invocation id is a
        failure, no response at all fails with `missing` (or raises TimeoutError)."""
        conn = worker.connection()
        pending = await conn.start_invocation(
            function_id, inputs, trigger_metadata=trigger_metadata
        )
        if cancel_after is not None:
            done, _ = await asyncio.wait({pending.future}, timeout=cancel_after)
            if not done:
                await conn.cancel(pending.invocation_id)

        def wrong_id(strays: list[Any]) -> str | None:
            if strays:
                return (
                    f"the InvocationResponse carried invocation_id "
                    f"{strays[0].invocation_id!r}, not {pending.invocation_id!r}"
                )
            return missing

        return await self.expect(
            worker,
            pending.result(timeout or self.options.timeout),
            kind="invocation_response",
            key=pending.invocation_id,
            missing=wrong_id,
        )

    async def alive(self, worker: LaunchedWorker) -> None:
        """Raise `Failed` unless the worker still answers: status when that works, else an
        invocation of an unknown function (any response will do)."""
        timeout = self.options.timeout
        try:
            if self.status_ok:
                await self.expect(
                    worker,
                    worker.connection().status(timeout=timeout),
                    kind="worker_status_response",
                    key="*",
                    missing=f"no WorkerStatusResponse within {timeout:g} s",
                )
            else:
                await self.invoke(worker, f"conformance-liveness-{uuid.uuid4()}")
        except ConnectionError:
            raise Failed(f"the worker ended the stream{await self.exit_note(worker)}") from None
        if worker.returncode is not None:
            raise Failed(f"the worker exited{await self.exit_note(worker)}")

    # -- one scenario ------------------------------------------------------------------------
    async def scenario(self, name: str, step: Step, needs: Needs) -> ScenarioResult:
        """Run one step and turn what happened into its report row; never raises for the
        worker's misbehaviour. `needs` says which process the step is given (`Needs`)."""
        started = time.monotonic()
        worker: LaunchedWorker | None = None
        own = needs in ("own", "placeholder")
        try:
            if needs == "ready":
                worker = await self.ready()
            elif self.blocked is not None:
                raise NotRun(f"not run: {self.blocked}")
            elif own or self.current is None:
                worker = await self.launch(placeholder=needs == "placeholder")
            else:
                worker = self.current
            outcome, detail = await step(self, worker)
            if worker.generation > 1:
                detail += f" (on a fresh worker, #{worker.generation})"
            if not own and worker.returncode is not None and name != "terminate":
                outcome = Outcome.FAIL
                detail = f"{detail}; then the worker exited{await self.exit_note(worker)}"
        except NotRun as exc:
            outcome, detail = Outcome.SKIP, str(exc)
        except Failed as exc:
            outcome, detail = Outcome.FAIL, str(exc)
        except TimeoutError:
            outcome, detail = Outcome.FAIL, f"no reply within {self.options.timeout:g} s"
            stopped = worker or self.current
            if stopped is not None and not stopped.usable:
                detail += f"; the worker stopped{await self.exit_note(stopped)}"
        except (ConnectionError, *_STREAM_ERRORS) as exc:
            outcome, detail = Outcome.FAIL, "the worker ended the stream"
            if not isinstance(exc, ConnectionError):
                detail = f"the stream failed ({type(exc).__name__}: {one_line(str(exc), 80)})"
            stopped = worker or self.current
            if stopped is not None:
                detail += await self.exit_note(stopped)
        finally:
            if own and worker is not None:
                await self.kill(worker)
        return ScenarioResult(name, outcome, detail, time.monotonic() - started)
