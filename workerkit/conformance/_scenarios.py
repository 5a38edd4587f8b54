"""The scenarios of ``workerkit conformance`` and the runner that plays them against a worker
process through `workerkit.testing.TestHost`. Documented in `workerkit.conformance`."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import betterproto2
import grpclib.exceptions
import h2.exceptions

from .._generated import AzureFunctionsRpcMessages as pb
from ..cli import HostArgs
from ..testing import HostConnection, TestHost, WorkerProcess, http_bindings
from ._cases import (
    MISSING,
    Case,
    CasesError,
    describe,
    has_capability,
    http_problem,
    input_data,
    kind_of,
    output_problems,
    short,
    value_problem,
)

if TYPE_CHECKING:
    from ..emulator import FunctionSpec

#: The capabilities that decide whether the host sends a control message at all (§4.2):
#: WorkerStatusRequest, WorkerTerminate (else it kills the process), InvocationCancel.
CONTROL_CAPABILITIES: Final = (
    "WorkerStatus",
    "HandlesWorkerTerminateMessage",
    "HandlesInvocationCancelMessage",
)


# ---------------------------------------------------------------------------------------------
# Results


class Outcome(enum.StrEnum):
    """How a scenario ended."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    """The host would cope, but something is off (a failure with ``--strict``)."""
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One row of the report: scenario name, outcome, a one-line detail, seconds taken."""

    name: str
    outcome: Outcome
    detail: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `check_worker` found, in scenario order."""

    command: tuple[str, ...]
    cwd: str
    results: tuple[ScenarioResult, ...]
    #: What the worker declared in its WorkerInitResponse (after any environment reload).
    capabilities: Mapping[str, str]

    def ok(self, *, strict: bool = False) -> bool:
        """True when nothing failed (and, with `strict`, nothing warned)."""
        bad = {Outcome.FAIL, Outcome.WARN} if strict else {Outcome.FAIL}
        return not any(result.outcome in bad for result in self.results)

    def counts(self) -> dict[str, int]:
        """How many scenarios ended in each outcome (every outcome listed)."""
        return {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}

    def to_json(self, *, strict: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: ``ok``, ``command``, ``cwd``, ``capabilities``, ``counts`` and
        ``scenarios`` (each ``name``, ``result``, ``detail``, ``seconds``)."""
        return {
            "ok": self.ok(strict=strict),
            "command": list(self.command),
            "cwd": self.cwd,
            "capabilities": dict(self.capabilities),
            "counts": self.counts(),
            "scenarios": [
                {
                    "name": r.name,
                    "result": r.outcome.value,
                    "detail": r.detail,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }

    def table(self) -> str:
        """The report as a text table (scenario, result, time, detail) with a summary line."""
        width = max([len("scenario"), *(len(r.name) for r in self.results)])
        lines = [
            f"worker: {' '.join(self.command)}",
            f"cwd:    {self.cwd}",
            "",
            f"{'scenario':<{width}}  result  {'time':>6}  detail",
        ]
        for r in self.results:
            lines.append(f"{r.name:<{width}}  {r.outcome.value:<6}  {r.seconds:>5.2f}s  {r.detail}")
        counts = self.counts()
        lines.append("")
        lines.append(", ".join(f"{counts[o.value]} {o.value}" for o in Outcome))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ConformanceOptions:
    """Time limits, in seconds; each must be positive.

    `start_timeout`: launch → StartStream (the host allows 60). `init_timeout`: WorkerInitRequest
    → response (the host's initializationTimeout, 10). `timeout`: any other reply.
    `grace`: WorkerTerminate's grace period, also the limit for exiting after the stream ends.
    """

    start_timeout: float = 30.0
    init_timeout: float = 10.0
    timeout: float = 10.0
    grace: float = 5.0

    def __post_init__(self) -> None:
        for name in ("start_timeout", "init_timeout", "timeout", "grace"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"ConformanceOptions.{name} must be a positive number, not {value!r}"
                )


# ---------------------------------------------------------------------------------------------
# Running the scenarios


class _Failed(Exception):
    """A check failed; the message is the detail shown in the report."""


class _NotRun(Exception):
    """A scenario cannot run; the message says why (reported as skip)."""


@dataclass(eq=False)
class _Worker:
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
            raise _NotRun("the worker has no stream")
        return self.conn


_Step = Callable[[_Worker], Awaitable[tuple[Outcome, str]]]
#: What sending on a stream the worker broke or ended can raise (besides ConnectionError).
_STREAM_ERRORS: Final = (
    h2.exceptions.H2Error,
    grpclib.exceptions.GRPCError,
    grpclib.exceptions.ProtocolError,
    grpclib.exceptions.StreamTerminatedError,
)


def _status_name(result: pb.StatusResult) -> str:
    return str(result.status.name)


def _result_problem(result: pb.StatusResult | None, what: str) -> str | None:
    if result is None:
        return (
            f"{what} has no result: the host's handler throws on a missing result and "
            "counts it as a failure of the worker (§3.6)"
        )
    return None


def _failure_text(result: pb.StatusResult) -> str:
    exception = result.exception
    message = exception.message.strip() if exception is not None else ""
    return f"{_status_name(result)}: {message}" if message else _status_name(result)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Runner:
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
    ) -> None:
        self.host = host
        self.command = list(command)
        self.cwd = cwd
        self.env = dict(env)
        self.worker_dir = worker_dir
        self.functions = list(functions) if functions is not None else None
        self.app_errors = list(app_errors)
        self.cases = list(cases)
        self.options = options
        self.worker_indexing = worker_indexing
        self.capabilities: dict[str, str] = {}
        self.workers: list[_Worker] = []
        self.blocked: str | None = None
        self.status_ok = False
        self.loaded: dict[str, str] = {}  # function name -> "" when loaded, else the failure
        self.current: _Worker | None = None

    # -- processes ---------------------------------------------------------------------------
    async def launch(self) -> _Worker:
        """Start the command with the host's argv (not waiting for its StartStream)."""
        args = self.host.host_args()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                *args.to_argv(),
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.blocked = "the worker could not be started (see start-stream)"
            raise _Failed(f"cannot start {self.command[0]!r}: {exc.strerror or exc}") from None
        worker = _Worker(WorkerProcess(process), args)
        self.workers.append(worker)
        return worker

    async def connect(self, worker: _Worker) -> None:
        """Wait for the worker's StartStream; raise `_Failed` saying what happened instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.start_timeout
        refused = len(self.host.refused)
        waiter = asyncio.ensure_future(self.host.connection(worker.args.worker_id, None))
        try:
            while not waiter.done():
                if len(self.host.refused) > refused:
                    raise _Failed(self._refusal(worker, self.host.refused[refused]))
                if worker.returncode is not None:
                    raise _Failed(f"exited before StartStream{await self.exit_note(worker)}")
                if loop.time() > deadline:
                    raise _Failed(
                        f"no StartStream within {self.options.start_timeout:g} s "
                        f"(the host allows 60 s){self.stderr_note(worker)}"
                    )
                await asyncio.wait({waiter}, timeout=0.02)
            worker.conn = waiter.result()
        finally:
            waiter.cancel()

    @staticmethod
    def _refusal(worker: _Worker, refused: tuple[str, str]) -> str:
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
        return f"{what}: the host ends such a stream at once (§3.1)"

    async def exit_note(self, worker: _Worker) -> str:
        with contextlib.suppress(TimeoutError):
            await worker.process.wait(2)
        return f" (exit status {worker.returncode}){self.stderr_note(worker)}"

    @staticmethod
    def stderr_note(worker: _Worker) -> str:
        lines = [
            ln for ln in worker.process.stderr.decode(errors="replace").splitlines() if ln.strip()
        ]
        if not lines:
            return ""
        return "; stderr: " + _one_line(" | ".join(lines[-3:]))

    async def kill(self, worker: _Worker) -> None:
        worker.process.kill()
        with contextlib.suppress(TimeoutError):
            await worker.process.wait(5)

    async def init(self, worker: _Worker, timeout: float) -> pb.WorkerInitResponse:
        conn = worker.connection()
        try:
            return await conn.init(
                function_app_directory=str(self.cwd),
                worker_directory=self.worker_dir,
                timeout=timeout,
            )
        except TimeoutError:
            worker.timed_out.add(("worker_init_response", ""))
            raise

    async def ready(self) -> _Worker:
        """The current worker if it still serves, else a fresh one: started, initialised and
        with the app's functions loaded (results not reported again)."""
        if self.blocked is not None:
            raise _NotRun(f"not run: {self.blocked}")
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
        except (_Failed, TimeoutError, ConnectionError) as exc:
            reason = str(exc) or "no reply in time"
            self.blocked = f"a fresh worker (after the previous one stopped) failed: {reason}"
            raise _NotRun(f"not run: {self.blocked}") from None
        return worker

    async def load(
        self, worker: _Worker, request: pb.FunctionLoadRequest
    ) -> pb.FunctionLoadResponse:
        conn = worker.connection()
        try:
            return await conn.send_load(request, timeout=self.options.timeout)
        except TimeoutError:
            worker.timed_out.add(("function_load_response", request.function_id))
            raise

    async def invoke(
        self,
        worker: _Worker,
        function_id: str,
        inputs: Mapping[str, pb.TypedData] | None = None,
        *,
        trigger_metadata: Mapping[str, pb.TypedData] | None = None,
        timeout: float | None = None,
        cancel_after: float | None = None,
    ) -> pb.InvocationResponse:
        conn = worker.connection()
        pending = await conn.start_invocation(
            function_id, inputs, trigger_metadata=trigger_metadata
        )
        try:
            if cancel_after is not None:
                done, _ = await asyncio.wait({pending.future}, timeout=cancel_after)
                if not done:
                    await conn.cancel(pending.invocation_id)
            return await pending.result(timeout or self.options.timeout)
        except TimeoutError:
            worker.timed_out.add(("invocation_response", pending.invocation_id))
            stray = self.unmatched(worker, "invocation_response")
            if stray:
                raise _Failed(
                    f"the InvocationResponse carried invocation_id "
                    f"{stray[0].invocation_id!r}, not {pending.invocation_id!r}"
                ) from None
            raise

    def unmatched(self, worker: _Worker, kind: str) -> list[Any]:
        """Unmatched replies of `kind` not yet explained; they become explained."""
        found = []
        for message in worker.connection().unmatched:
            name, body = betterproto2.which_one_of(message, "content")
            if name == kind and id(message) not in worker.explained:
                worker.explained.add(id(message))
                found.append(body)
        return found

    async def alive(self, worker: _Worker) -> None:
        """Raise `_Failed` unless the worker still answers: status when that works, else an
        invocation of an unknown function (any response will do)."""
        try:
            if self.status_ok:
                try:
                    await worker.connection().status(timeout=self.options.timeout)
                except TimeoutError:
                    worker.timed_out.add(("worker_status_response", "*"))
                    raise _Failed(
                        f"no WorkerStatusResponse within {self.options.timeout:g} s"
                    ) from None
            else:
                await self.invoke(worker, f"conformance-liveness-{uuid.uuid4()}")
        except ConnectionError:
            raise _Failed(f"the worker ended the stream{await self.exit_note(worker)}") from None
        if worker.returncode is not None:
            raise _Failed(f"the worker exited{await self.exit_note(worker)}")

    # -- the run -----------------------------------------------------------------------------
    async def run(self) -> list[ScenarioResult]:
        """Every scenario in report order. The steps come in three phases, as the functions
        to load are known only after the first (worker indexing)."""
        results: list[ScenarioResult] = []
        stream_end: asyncio.Task[ScenarioResult] | None = None
        try:
            for phase in (self.handshake_steps, self.function_steps, self.closing_steps):
                for name, step, ready in phase():
                    if name == "stream-end":  # its own process, concurrently; reported last
                        stream_end = asyncio.create_task(self.scenario(name, step, ready))
                        continue
                    results.append(await self.scenario(name, step, ready))
            results.append(
                await stream_end
                if stream_end is not None
                else ScenarioResult("stream-end", Outcome.SKIP, f"not run: {self.blocked}", 0.0)
            )
        finally:
            if stream_end is not None and not stream_end.done():
                stream_end.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream_end
            for worker in self.workers:
                await self.kill(worker)
        return results

    # Steps: (name, step, needs a `ready` worker). start-stream and init run on the first
    # process as it is; stream-end and restart-load start their own processes.

    def handshake_steps(self) -> list[tuple[str, _Step, bool]]:
        steps: list[tuple[str, _Step, bool]] = [
            ("start-stream", self.start_stream, False),
            ("stream-end", self.stream_end, False),
            ("init", self.init_step, False),
            ("capabilities", self.capabilities_step, True),
            ("environment-reload", self.environment_reload, True),
            ("status", self.status, True),
            ("load-probe", self.load_probe, True),
        ]
        if self.worker_indexing:
            steps.append(("metadata", self.metadata, True))
        elif self.functions is not None:
            steps.append(("app", self.app_step, True))
        return steps

    def function_steps(self) -> list[tuple[str, _Step, bool]]:
        steps: list[tuple[str, _Step, bool]] = [
            (f"load:{spec.name}", self.load_step(spec), True) for spec in self.functions or ()
        ]
        if self.worker_indexing and self.functions:
            steps.append(("restart-load", self.restart_load, False))
        steps += [(f"case:{case.name}", self.case_step(case), True) for case in self.cases]
        return steps

    def closing_steps(self) -> list[tuple[str, _Step, bool]]:
        return [
            ("unknown-function", self.unknown_function, True),
            ("cancel-unknown", self.cancel_unknown, True),
            ("message-rules", self.message_rules, True),
            ("terminate", self.terminate, True),
        ]

    async def scenario(self, name: str, step: _Step, ready: bool) -> ScenarioResult:
        """Run one step and turn what happened into its report row; never raises for the
        worker's misbehaviour."""
        started = time.monotonic()
        try:
            if ready:
                worker = await self.ready()
            else:
                if self.blocked is not None:
                    raise _NotRun(f"not run: {self.blocked}")
                worker = self.current if self.current is not None else await self.launch()
            outcome, detail = await step(worker)
            if worker.generation > 1:
                detail += f" (on a fresh worker, #{worker.generation})"
            if worker.returncode is not None and name not in ("terminate", "stream-end"):
                outcome = Outcome.FAIL
                detail = f"{detail}; then the worker exited{await self.exit_note(worker)}"
        except _NotRun as exc:
            outcome, detail = Outcome.SKIP, str(exc)
        except _Failed as exc:
            outcome, detail = Outcome.FAIL, str(exc)
        except TimeoutError:
            outcome, detail = Outcome.FAIL, f"no reply within {self.options.timeout:g} s"
            if self.current is not None and not self.current.usable:
                detail += f"; the worker stopped{await self.exit_note(self.current)}"
        except (ConnectionError, *_STREAM_ERRORS) as exc:
            outcome, detail = Outcome.FAIL, "the worker ended the stream"
            if not isinstance(exc, ConnectionError):
                detail = f"the stream failed ({type(exc).__name__}: {_one_line(str(exc), 80)})"
            if self.current is not None:
                detail += await self.exit_note(self.current)
        return ScenarioResult(name, outcome, detail, time.monotonic() - started)

    # -- steps -------------------------------------------------------------------------------
    async def start_stream(self, worker: _Worker) -> tuple[Outcome, str]:
        self.current = worker
        try:
            await self.connect(worker)
        except _Failed:
            self.blocked = "the worker never opened its stream (see start-stream)"
            raise
        conn = worker.connection()
        if conn.start_request_id != worker.args.request_id:
            return Outcome.WARN, (
                f"worker id echoed, but StartStream.request_id is {conn.start_request_id!r}, "
                f"not the --requestId {worker.args.request_id!r} (the host ignores it; "
                "workers echo it, §3.1)"
            )
        return Outcome.PASS, "worker id and request id from the command line"

    async def init_step(self, worker: _Worker) -> tuple[Outcome, str]:
        try:
            reply = await self.init(worker, self.options.init_timeout)
        except (TimeoutError, ConnectionError) as exc:
            self.blocked = "the worker did not answer WorkerInitRequest (see init)"
            if isinstance(exc, ConnectionError):
                raise _Failed(
                    f"the worker ended the stream{await self.exit_note(worker)}"
                ) from None
            raise _Failed(
                f"no WorkerInitResponse within {self.options.init_timeout:g} s "
                "(initializationTimeout: the host would restart the worker)"
            ) from None
        self.capabilities = dict(reply.capabilities)
        problem = _result_problem(reply.result, "WorkerInitResponse")
        if problem:
            raise _Failed(problem)
        assert reply.result is not None
        if reply.result.status.name != "Success":
            raise _Failed(f"answered {_failure_text(reply.result)} (the host restarts the worker)")
        detail = "Success"
        metadata = reply.worker_metadata
        if metadata is not None and metadata.runtime_name:
            detail += f"; runtime {metadata.runtime_name} {metadata.runtime_version}".rstrip()
        return Outcome.PASS, detail

    async def capabilities_step(self, worker: _Worker) -> tuple[Outcome, str]:
        caps = self.capabilities
        flags = [
            f"{name} {'yes' if has_capability(caps, name) else 'NO'}"
            for name in CONTROL_CAPABILITIES
        ]
        others = sorted(
            k for k in caps if k not in CONTROL_CAPABILITIES and has_capability(caps, k)
        )
        detail = ", ".join(flags) + (f"; also {', '.join(others)}" if others else "")
        empty = sorted(k for k, v in caps.items() if not v.strip())
        uri = caps.get("HttpUri", "").strip()
        if uri:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _Failed(f"HttpUri {uri!r} is not an absolute URI: a worker error (§4.2)")
        warnings = []
        if empty:
            warnings.append(f"empty values count as not declared: {', '.join(empty)}")
        if has_capability(caps, "SupportsLoadResponseCollection"):
            warnings.append(
                "SupportsLoadResponseCollection: the host mishandles it for 2+ functions (§4)"
            )
        if warnings:
            return Outcome.WARN, "; ".join(warnings) + f" [{detail}]"
        return Outcome.PASS, detail

    async def environment_reload(self, worker: _Worker) -> tuple[Outcome, str]:
        environment = {k: v for k, v in self.env.items() if v}
        try:
            reply = await worker.connection().reload_environment(
                environment, str(self.cwd), timeout=self.options.timeout
            )
        except TimeoutError:
            worker.timed_out.add(("function_environment_reload_response", ""))
            raise _Failed(
                f"no FunctionEnvironmentReloadResponse within {self.options.timeout:g} s"
            ) from None
        problem = _result_problem(reply.result, "FunctionEnvironmentReloadResponse")
        if problem:
            raise _Failed(problem)
        assert reply.result is not None
        if reply.capabilities:
            replace = pb.FunctionEnvironmentReloadResponseCapabilitiesUpdateStrategy.replace
            if reply.capabilities_update_strategy == replace:
                self.capabilities.clear()
            self.capabilities.update(reply.capabilities)
        if reply.result.status.name != "Success":
            raise _Failed(f"answered {_failure_text(reply.result)}")
        return Outcome.PASS, f"Success ({len(environment)} variables, app directory {self.cwd})"

    async def status(self, worker: _Worker) -> tuple[Outcome, str]:
        if not has_capability(self.capabilities, "WorkerStatus"):
            raise _NotRun("skipped (not advertised: WorkerStatus)")
        try:
            await worker.connection().status(timeout=self.options.timeout)
        except TimeoutError:
            worker.timed_out.add(("worker_status_response", "*"))
            stray = self.unmatched(worker, "worker_status_response")
            detail = (
                "no WorkerStatusResponse with the request's request_id within "
                f"{self.options.timeout:g} s"
            )
            if stray:
                got = [
                    m.request_id for m in worker.connection().unmatched if m.worker_status_response
                ]
                detail += f" (one came with request_id {got[-1]!r})" if got else ""
            raise _Failed(detail + ": the host matches it by request_id (§3.6)") from None
        self.status_ok = True
        return Outcome.PASS, "answered with the request_id echoed"

    async def load_probe(self, worker: _Worker) -> tuple[Outcome, str]:
        function_id = f"conformance-probe-{uuid.uuid4()}"
        directory = self.cwd / "conformance_probe_missing"
        request = HostConnection.load_request(
            function_id,
            "conformance_probe_missing",
            bindings=http_bindings(),
            script_file=str(directory / "missing.txt"),
            directory=str(directory),
        )
        try:
            reply = await self.load(worker, request)
        except TimeoutError:
            stray = self.unmatched(worker, "function_load_response")
            if stray:
                raise _Failed(
                    f"FunctionLoadResponse carried function_id {stray[0].function_id!r}, not "
                    f"{function_id!r}: the host's lookup throws, a worker error (§3.6)"
                ) from None
            raise _Failed(
                f"no FunctionLoadResponse within {self.options.timeout:g} s for a function whose "
                "script file does not exist"
            ) from None
        problem = _result_problem(reply.result, "FunctionLoadResponse")
        if problem:
            raise _Failed(problem)
        assert reply.result is not None
        answer = _one_line(_failure_text(reply.result), 120)
        return Outcome.PASS, f"function_id echoed, result {answer}"

    async def metadata(self, worker: _Worker) -> tuple[Outcome, str]:
        """Worker indexing (§3.2, §5.8): the functions the worker reports, validated as the
        host validates them, become the functions to load."""
        from ..emulator import discover_functions, functions_from_metadata

        try:
            reply = await worker.connection().functions_metadata(
                str(self.cwd), timeout=self.options.timeout
            )
        except TimeoutError:
            worker.timed_out.add(("function_metadata_response", ""))
            raise _Failed(
                f"no FunctionMetadataResponse within {self.options.timeout:g} s (the host "
                "allows 60 s, then counts a worker error)"
            ) from None
        if reply.use_default_metadata_indexing:
            found, errors = discover_functions(self.cwd)
            source = "from function.json (the worker answered use_default_metadata_indexing)"
        else:
            found, errors = functions_from_metadata(reply.function_metadata_results, self.cwd)
            source = "reported by the worker"
        self.functions = sorted(found, key=lambda spec: spec.disabled)
        names = ", ".join(s.name + (" (disabled)" if s.disabled else "") for s in found)
        summary = f"{len(found)} function(s) {source}" + (f": {names}" if names else "")
        problem = _result_problem(reply.result, "FunctionMetadataResponse")
        if problem or errors:
            rejected = [f"rejected {e}" for e in errors]
            raise _Failed("; ".join([*([problem] if problem else []), *rejected, summary]))
        assert reply.result is not None
        if reply.result.status.name != "Success":
            return Outcome.WARN, (
                f"result {_one_line(_failure_text(reply.result), 120)} (the host only logs it); "
                + summary
            )
        if not found:
            return Outcome.WARN, summary
        return Outcome.PASS, summary

    async def restart_load(self, _: _Worker) -> tuple[Outcome, str]:
        """A restarted worker gets StartStream, init and the loads, with no metadata request
        (§3.4): it must load the functions by the ids the first worker reported."""
        worker = await self.launch()
        try:
            await self.connect(worker)
            await self.init(worker, self.options.init_timeout)
            failures = []
            for spec in self.functions or ():
                try:
                    reply = await self.load(worker, spec.load_request())
                except TimeoutError:
                    failures.append(f"{spec.name}: no FunctionLoadResponse")
                    continue
                if reply.result is None or reply.result.status.name != "Success":
                    answer = "no result" if reply.result is None else _failure_text(reply.result)
                    failures.append(f"{spec.name}: {_one_line(answer, 120)}")
            if failures:
                raise _Failed(
                    "a restarted worker (no FunctionsMetadataRequest, §3.4) could not load: "
                    + "; ".join(failures)
                )
            count = len(self.functions or ())
            return Outcome.PASS, f"a fresh process loaded {count} function(s) without metadata"
        finally:
            await self.kill(worker)

    async def app_step(self, worker: _Worker) -> tuple[Outcome, str]:
        functions = self.functions or []
        names = ", ".join(s.name + (" (disabled)" if s.disabled else "") for s in functions)
        if self.app_errors:
            raise _Failed("; ".join(self.app_errors) + (f" [loaded: {names}]" if names else ""))
        if not functions:
            return Outcome.WARN, f"no function.json found under {self.cwd}"
        return Outcome.PASS, f"{len(functions)} function(s): {names}"

    def load_step(self, spec: FunctionSpec) -> _Step:
        async def step(worker: _Worker) -> tuple[Outcome, str]:
            self.loaded[spec.name] = "not answered"
            request = spec.load_request()
            try:
                reply = await self.load(worker, request)
            except TimeoutError:
                stray = self.unmatched(worker, "function_load_response")
                extra = f" (one came with function_id {stray[0].function_id!r})" if stray else ""
                raise _Failed(
                    f"no FunctionLoadResponse for {request.function_id!r} within "
                    f"{self.options.timeout:g} s{extra}"
                ) from None
            problem = _result_problem(reply.result, "FunctionLoadResponse")
            if problem:
                raise _Failed(problem)
            assert reply.result is not None
            if reply.result.status.name != "Success":
                self.loaded[spec.name] = _failure_text(reply.result)
                raise _Failed(
                    f"answered {_one_line(_failure_text(reply.result))} (the host fails the "
                    "function's invocations without sending them)"
                )
            self.loaded[spec.name] = ""
            return Outcome.PASS, f"Success (function id {request.function_id})"

        return step

    def case_step(self, case: Case) -> _Step:
        async def step(worker: _Worker) -> tuple[Outcome, str]:
            return await self.run_case(worker, case)

        return step

    async def run_case(self, worker: _Worker, case: Case) -> tuple[Outcome, str]:
        if self.functions is None:
            raise _NotRun("not run: no functions are known (see metadata)")
        spec = next((s for s in self.functions if s.name == case.function), None)
        if spec is None:
            known = ", ".join(s.name for s in self.functions) or "none"
            raise _Failed(f"no function {case.function!r} in the app (functions: {known})")
        if spec.disabled:
            raise _Failed(f"function {case.function!r} is disabled: the host never invokes it")
        if self.loaded.get(spec.name):
            raise _NotRun(
                f"not run: {spec.name} failed to load ({_one_line(self.loaded[spec.name])})"
            )
        if case.cancel_after is not None and not has_capability(
            self.capabilities, "HandlesInvocationCancelMessage"
        ):
            raise _NotRun("skipped (not advertised: HandlesInvocationCancelMessage)")
        function_metadata = spec.load_request().metadata
        bindings = dict(function_metadata.bindings) if function_metadata is not None else {}
        inputs, metadata = self.case_inputs(case, bindings)
        try:
            reply = await self.invoke(
                worker,
                spec.function_id,
                inputs,
                trigger_metadata=metadata,
                timeout=case.timeout,
                cancel_after=case.cancel_after,
            )
        except TimeoutError:
            raise _Failed(
                f"no InvocationResponse within {case.timeout or self.options.timeout:g} s"
            ) from None
        return self.judge(case, reply, bindings)

    def case_inputs(
        self, case: Case, bindings: Mapping[str, pb.BindingInfo]
    ) -> tuple[dict[str, pb.TypedData], dict[str, pb.TypedData]]:
        """Input data in the host's order (trigger first, then input bindings), and the
        trigger metadata the host would add, with the case's own entries on top."""
        inbound = {
            name: info
            for name, info in bindings.items()
            if info.direction != pb.BindingInfoDirection.out
        }
        triggers = [n for n, info in inbound.items() if info.type.lower().endswith("trigger")]
        unknown = [n for n in case.inputs if n not in inbound]
        if unknown:
            raise _Failed(
                f"input {unknown[0]!r} is not an input binding of {case.function} "
                f"(inputs: {', '.join(inbound) or 'none'})"
            )
        missing = [n for n in triggers if n not in case.inputs]
        if missing:
            raise _Failed(f'the case gives no value for the trigger "{missing[0]}"')
        inputs: dict[str, pb.TypedData] = {}
        metadata: dict[str, pb.TypedData] = {}
        for name in sorted(inbound, key=lambda n: n not in triggers):
            raw = case.inputs.get(name)
            trigger = name if name in triggers else ""
            try:
                inputs[name], added = input_data(
                    raw, inbound[name], self.capabilities, f"inputs.{name}", trigger=trigger
                )
            except CasesError as exc:
                raise _Failed(str(exc)) from None
            metadata.update(added)
        for key, raw in case.trigger_metadata.items():
            metadata[key] = input_data(raw, None, self.capabilities, f"trigger_metadata.{key}")[0]
        return inputs, metadata

    def judge(
        self,
        case: Case,
        reply: pb.InvocationResponse,
        bindings: Mapping[str, pb.BindingInfo],
    ) -> tuple[Outcome, str]:
        problem = _result_problem(reply.result, "InvocationResponse")
        if problem:
            raise _Failed(problem)
        assert reply.result is not None
        expect = case.expect
        got = _status_name(reply.result)
        if got != expect.status:
            raise _Failed(f"expected {expect.status}, got {_one_line(_failure_text(reply.result))}")
        problems: list[str] = []
        notes: list[str] = []
        if expect.error is not None:
            message = reply.result.exception.message if reply.result.exception else ""
            if expect.error not in message:
                problems.append(f"failure message {short(message)} lacks {expect.error!r}")
        if got == "Success":
            problems += output_problems(reply)
        outputs = {b.name: b.data for b in reply.output_data}
        if expect.return_value is not MISSING:
            problem = value_problem(reply.return_value, expect.return_value, "return_value")
            problems += [problem] if problem else []
        for name, expected in expect.outputs.items():
            problem = value_problem(outputs.get(name), expected, f"outputs.{name}")
            problems += [problem] if problem else []
        if expect.http is not None:
            http_out = [
                n
                for n, info in bindings.items()
                if info.direction != pb.BindingInfoDirection.in_ and info.type.lower() == "http"
            ]
            name = http_out[0] if http_out else "$return"
            data = reply.return_value if name == "$return" else outputs.get(name)
            problem, silent = http_problem(data, expect.http, name)
            problems += [problem] if problem else []
            if data is None or data.http is None or data.http.body is not None:
                notes += silent  # (a missing body is already a problem, above)
        if problems:
            raise _Failed("; ".join(problems))
        strays = sorted(
            name
            for name in outputs
            if name not in bindings or bindings[name].direction == pb.BindingInfoDirection.in_
        )
        if strays:
            notes.append(
                f"outputs {', '.join(strays)} match no output binding: the host drops them"
            )
        if notes:
            return Outcome.WARN, f"{got}, but: " + "; ".join(notes)
        answers = [f"{name} {describe(data)}" for name, data in outputs.items()]
        if kind_of(reply.return_value):
            answers.insert(0, f"$return {describe(reply.return_value)}")
        return Outcome.PASS, f"{got}" + (f": {'; '.join(answers)}" if answers else "")

    async def unknown_function(self, worker: _Worker) -> tuple[Outcome, str]:
        function_id = f"conformance-unknown-{uuid.uuid4()}"
        try:
            reply = await self.invoke(worker, function_id)
        except TimeoutError:
            raise _Failed(
                f"no InvocationResponse within {self.options.timeout:g} s for function id "
                f"{function_id!r}, which was never loaded"
            ) from None
        problem = _result_problem(reply.result, "InvocationResponse")
        if problem:
            raise _Failed(problem)
        assert reply.result is not None
        if reply.result.status.name != "Failure":
            raise _Failed(f"answered {_status_name(reply.result)} for a function never loaded")
        await asyncio.sleep(0.2)  # a worker that crashes after replying shows it now
        await self.alive(worker)
        return Outcome.PASS, _one_line(_failure_text(reply.result))

    async def cancel_unknown(self, worker: _Worker) -> tuple[Outcome, str]:
        if not has_capability(self.capabilities, "HandlesInvocationCancelMessage"):
            raise _NotRun("skipped (not advertised: HandlesInvocationCancelMessage)")
        await worker.connection().cancel(f"conformance-never-sent-{uuid.uuid4()}")
        await self.alive(worker)
        probe = "WorkerStatusRequest" if self.status_ok else "an invocation"
        return Outcome.PASS, f"ignored; the worker still answers {probe}"

    async def message_rules(self, worker: _Worker) -> tuple[Outcome, str]:
        failures: list[str] = []
        warnings: list[str] = []
        checked = 0
        for each in self.workers:
            if each.conn is None:
                continue
            messages = each.conn.messages
            checked += len(messages)
            for message in each.conn.unmatched:
                if id(message) in each.explained:
                    continue
                kind, body = betterproto2.which_one_of(message, "content")
                key = getattr(body, "invocation_id", "") or getattr(body, "function_id", "")
                if (kind, key) in each.timed_out or (kind, "*") in each.timed_out:
                    continue
                failures.append(f"unsolicited or second {kind}" + (f" for {key}" if key else ""))
            answered: dict[str, int] = {}
            for index, message in enumerate(messages):
                if message.invocation_response is not None:
                    answered.setdefault(message.invocation_response.invocation_id, index)
            late = orphan = 0
            for index, message in enumerate(messages):
                entry = message.rpc_log
                if entry is None or entry.log_category != pb.RpcLogRpcLogCategory.User:
                    continue
                if not entry.invocation_id:
                    orphan += 1
                elif index > answered.get(entry.invocation_id, len(messages)):
                    late += 1
            if orphan:
                warnings.append(f"{orphan} User log(s) without invocation_id (dropped, §6)")
            if late:
                warnings.append(
                    f"{late} User log(s) after their invocation's response (dropped, §3.9)"
                )
        if failures:
            raise _Failed("; ".join(sorted(set(failures))) + " (one reply per request, §3.6)")
        if warnings:
            return Outcome.WARN, "; ".join(warnings)
        return Outcome.PASS, f"{checked} messages from {len(self.workers)} process(es) checked"

    async def terminate(self, worker: _Worker) -> tuple[Outcome, str]:
        if not has_capability(self.capabilities, "HandlesWorkerTerminateMessage"):
            await self.kill(worker)
            raise _NotRun(
                "skipped (not advertised: HandlesWorkerTerminateMessage; the host kills the "
                "process instead)"
            )
        grace = self.options.grace
        started = time.monotonic()
        await worker.connection().terminate(grace)
        try:
            code = await worker.process.wait(grace)
        except TimeoutError:
            await self.kill(worker)
            raise _Failed(
                f"still running {grace:g} s after WorkerTerminate(grace_period={grace:g}s): the "
                f"host kills it then{self.stderr_note(worker)}"
            ) from None
        if code != 0:
            raise _Failed(f"exited with status {code}, not 0{self.stderr_note(worker)}")
        return Outcome.PASS, f"exited 0 after {time.monotonic() - started:.2f} s of {grace:g}"

    async def stream_end(self, _: _Worker) -> tuple[Outcome, str]:
        worker = await self.launch()
        try:
            try:
                await self.connect(worker)
            except _Failed as exc:
                raise _NotRun(f"not run: no stream ({exc})") from None
            with contextlib.suppress(TimeoutError, ConnectionError):
                await self.init(worker, self.options.init_timeout)
            grace = self.options.grace
            started = time.monotonic()
            worker.connection().close()
            try:
                code = await worker.process.wait(grace)
            except TimeoutError:
                raise _Failed(
                    f"still running {grace:g} s after the host ended the stream: the host "
                    "would keep a dead channel instead of restarting it (§3.7)"
                ) from None
            if code == 0:
                raise _Failed(
                    "exited with status 0 when the host ended the stream: the host takes 0 as "
                    "a deliberate stop and does not restart the worker (§1.5, §3.7)"
                )
            return Outcome.PASS, f"exited {code} after {time.monotonic() - started:.2f} s"
        finally:
            await self.kill(worker)
