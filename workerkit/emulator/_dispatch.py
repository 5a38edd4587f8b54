"""Invocations while the emulator runs: an HTTP request, a ``POST /admin/functions/<name>``
or a timer becomes an invocation on the supervisor's worker, and how it ended is logged with
the outputs the host would act on. Which functions exist, with which routes and schedules,
is settled at start-up (`_emulator`).

Outputs are read as the host reads them: each ``output_data`` entry goes to the output
binding of its name, ``return_value`` to a ``$return`` binding or, without one, a JSON
object's top-level keys to the bindings they name; kinds the host cannot take (collections,
model binding data) fail the invocation. The host's code: ``CreateScriptInvocationResult``
in src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs and ``HandleOutputDictionary`` in
src/WebJobs.Script/Description/Workers/WorkerFunctionInvoker.cs (Azure/azure-functions-host).
Outputs other than HTTP are printed as compact JSON (`Console.value`).

An HTTP output that is a JSON object with a ``body`` key is answered as the host answers it,
as a response description; the console says so once per function, since that is rarely
what the author meant. A function with no HTTP output, or whose HTTP output got no value, is
answered 204 with no body (the HTTP trigger's return-value handler stores ``ObjectResult(null)``,
which ASP.NET Core writes as 204: ``HttpBinding.SetResponse`` in
src/WebJobs.Script/Binding/Http/HttpBinding.cs). A failed invocation is answered 500 with no
body, as the host's ExceptionMiddleware answers it; the console keeps the error.

Every invocation runs under the function's retry policy, or the app's (`_retry`); the first
attempt carries a ``RetryContext`` too.

An HTTP request for a worker that reported the ``HttpUri`` capability is forwarded to that
address (HTTP proxying, `_proxy`): the worker's own response goes to the client, and the
invocation's outputs other than HTTP are logged as usual. Its retry policy cannot repeat it:
the host fails every attempt after the first at once.

A timer keeps the schedule status the host's schedule monitor records
(Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers:
``ScheduleMonitor.CheckPastDueAsync`` when the timer starts: no last run, the next
occurrence, updated now; ``TimerListener.InvokeJobFunction`` after each run: that run, the
occurrence after it, updated then). A timer fired by hand through the admin endpoint gets
that recorded status, as ``TimerTriggerBinding.BindAsync`` gives it, so ``Next`` is the
schedule's real next occurrence; a timer that is not running (disabled) gets its next
occurrence from now.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import ConversionError, decode_output

from ._app import FunctionSpec
from ._console import Console
from ._cron import CronSchedule, IntervalSchedule
from ._httpuri import HTTP_URI, ForwardRefused
from ._process import InputBuilder, InvocationOutcome, Supervisor
from ._retry import RetryPolicy, run_with_retries, supports_retry, unsupported_warning
from ._routes import Route
from ._rpchttp import (
    HttpOutput,
    IncomingRequest,
    ResponseError,
    ResponseObject,
    build_rpc_http,
    http_trigger_metadata,
    response_from_output,
)
from ._tracing import current_trace_id, request_trace
from ._triggers import TriggerInputError, timer_payload, trigger_data

if TYPE_CHECKING:
    from ._proxy import ProxiedRequest

__all__ = ["Dispatcher", "HttpFunction"]

_API_REASON: Final = "This function was programmatically called via the host APIs."
_SHOWN_VALUE: Final = 200


@dataclass
class _Attempt:
    """One attempt of an invocation: how it ended, its HTTP output value, its error."""

    outcome: InvocationOutcome
    http_value: pb.TypedData | None
    error: str | None


@dataclass
class _TimerStatus:
    """A timer's recorded ``ScheduleStatus`` (None for ``Last``/``LastUpdated``: not yet)."""

    schedule: CronSchedule | IntervalSchedule
    last: datetime.datetime | None = None
    next: datetime.datetime | None = None
    last_updated: datetime.datetime | None = None

    def record(self, when: datetime.datetime, *, ran: bool) -> None:
        """The status after a run at `when` (`ran`), or when the timer starts."""
        upcoming = self.schedule.next_after(when.replace(tzinfo=None))
        self.next = upcoming.astimezone() if upcoming is not None else None
        self.last_updated = when
        if ran:
            self.last = when


@dataclass(frozen=True)
class HttpFunction:
    """An HTTP-triggered function and its route (what the router finds for a request)."""

    spec: FunctionSpec
    route: Route
    methods: frozenset[str] | None
    trigger: Mapping[str, Any]


class Dispatcher:
    """Runs invocations on `supervisor`'s workers and reports how they ended on `console`.

    Args:
        supervisor: runs each attempt.
        console: where outcomes are reported.
        retry: ``host.json`` ``retry``, for functions without a policy of their own.
    """

    def __init__(
        self, supervisor: Supervisor, console: Console, retry: RetryPolicy | None = None
    ) -> None:
        self.console = console
        self.stopping = False
        self.retry = retry
        self._stop = asyncio.Event()
        self._supervisor = supervisor
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.Task[None]] = []
        self._firing: set[asyncio.Task[Any]] = set()  # timers with an invocation under way
        self._timer_status: dict[str, _TimerStatus] = {}  # by function name
        self._warned_response_objects: set[str] = set()  # function names
        self._warmed_up = False

    def stop_timers(self) -> None:
        """Fire no timer any more; a timer whose invocation is under way is left to finish
        (it is drained like the other invocations)."""
        self.stopping = True
        self._stop.set()  # and no retry waits any longer
        for timer in self._timers:
            if timer not in self._firing:
                timer.cancel()

    @property
    def environment(self) -> Mapping[str, str]:
        """The host's environment (app settings included), as the workers inherit it."""
        return self._supervisor.environment

    def started(self, functions: list[FunctionSpec]) -> None:
        """Say at start-up what the host would say about `functions`: a retry policy on a
        trigger that does not support one (kept all the same)."""
        for spec in functions:
            trigger = spec.trigger_type
            if self.policy(spec) is not None and not supports_retry(trigger):
                self.console.warning(unsupported_warning(spec.name))

    @property
    def proxying(self) -> bool:
        """Whether HTTP requests go to a worker's ``HttpUri`` (a ready worker reported one):
        their bodies are then not read ahead."""
        return bool(self._supervisor.capabilities.get(HTTP_URI))

    def policy(self, spec: FunctionSpec) -> RetryPolicy | None:
        """The retry policy `spec` runs under: its own, else the app's."""
        return spec.retry if spec.retry is not None else self.retry

    async def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the admin invocations and timers still running."""
        pending = [*self._tasks, *self._timers]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    # -- HTTP and the admin API --------------------------------------------------------------
    async def invoke_http(
        self, target: HttpFunction, request: IncomingRequest, proxy: ProxiedRequest | None = None
    ) -> HttpOutput:
        """Run an HTTP-triggered function for `request`; the response to write.

        A failed, timed-out or undeliverable invocation becomes an empty 500 (the details are
        logged); no HTTP output value, an empty 204. With `proxy` (the request itself; its
        body not read yet when `request` has none) a worker that reported ``HttpUri`` gets it
        forwarded, and `ProxiedRequest.answer` is then the response written, if any.

        Raises:
            Rejected: `proxy`'s body is refused (its answer says why).
        """
        spec = target.spec
        trigger_name = str(target.trigger.get("name", "req"))

        def data(
            capabilities: Mapping[str, str],
        ) -> tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]:
            incoming = request
            if proxy is not None and proxy.body is not None:
                incoming = replace(request, body=proxy.body)
            http = build_rpc_http(incoming, capabilities)
            metadata = http_trigger_metadata(incoming, http, trigger_name, capabilities)
            return [(trigger_name, pb.TypedData(http=http)), *_other_inputs(spec)], metadata

        try:
            with request_trace(request.headers):  # the request's trace, or a new one
                attempt: _Attempt | None = await self._invoke(spec, data, _API_REASON, proxy)
        except ForwardRefused as exc:
            self.console.error(f"Function '{spec.name}': {exc}")
            attempt = None
        if proxy is not None and proxy.forwarded:  # the worker answered the client itself
            await proxy.finish(attempt is not None and attempt.error is None)
            return HttpOutput(500)  # (when `proxy.answer` is None: nothing was sent)
        if attempt is None:
            return HttpOutput(500)
        outcome, http_value, error = attempt.outcome, attempt.http_value, attempt.error
        if error is not None:
            return HttpOutput(500)
        try:
            output = response_from_output(http_value)
        except ResponseError as exc:
            self.console.error(f"Function '{spec.name}' (Id={outcome.invocation_id}): {exc}")
            return HttpOutput(500)
        for note in output.notes:
            self.console.warning(f"Function '{spec.name}' (Id={outcome.invocation_id}): {note}")
        described = output.response_object
        if described is not None and spec.name not in self._warned_response_objects:
            self._warned_response_objects.add(spec.name)
            self.console.warning(_response_object_warning(spec.name, output.status, described))
        return output

    def admin_invoke(self, spec: FunctionSpec, body: bytes) -> tuple[int, str]:
        """``POST /admin/functions/<name>`` for `spec`: start an invocation; (status, text).

        202 once the invocation is started (its outcome is logged), 400 for a body that is not
        ``{"input": "..."}`` or input the trigger cannot take.
        """
        try:
            document = json.loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict):
            return 400, 'the body must be a JSON object like {"input": "..."}\n'
        text = document.get("input", "")
        if text is None:
            text = ""
        if not isinstance(text, str):
            return 400, "'input' must be a string (JSON-encode structured input)\n"
        extra = document.get("metadata")
        if extra is not None and not isinstance(extra, dict):
            return 400, "'metadata' must be a JSON object\n"
        trigger = spec.trigger
        if spec.trigger_type.lower() == "httptrigger":
            return 400, f"{spec.name} is an HTTP function: call its URL instead\n"

        timer = self._timer_status.get(spec.name)

        def data(
            capabilities: Mapping[str, str],
        ) -> tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]:
            value, metadata = trigger_data(
                trigger, text, capabilities=capabilities, extra_metadata=extra
            )
            if timer is not None:  # the recorded status, as the host binds it (module docstring)
                if timer.next is None and timer.last_updated is None:  # not running
                    now = datetime.datetime.now().astimezone()
                    upcoming = timer.schedule.next_after(now.replace(tzinfo=None))
                    value = timer_payload(None, upcoming.astimezone() if upcoming else None)
                else:
                    value = timer_payload(timer.last, timer.next, last_updated=timer.last_updated)
            return [(str(trigger.get("name")), value), *_other_inputs(spec)], metadata

        try:
            data(self._supervisor.capabilities)
        except TriggerInputError as exc:
            return 400, f"{exc}\n"
        self._spawn(self._run(spec, data, _API_REASON))
        return 202, ""

    async def warmup(self, spec: FunctionSpec | None) -> int:
        """``/admin/warmup``: run the app's warmup function `spec` the first time only; the
        status to answer.

        The host sets its once-per-process flag before it looks for the function, so a
        later request runs nothing, whatever happened (200); so does one without a warmup
        function. A disabled one is not found (404). A run answers as an HTTP function
        without HTTP output would, except that the warmup trigger has no return-value handler
        (``OkResult``): 200, or 500 when it failed. Its trigger gets the host's
        ``WarmupContext``, an object without properties, as JSON (``ToRpcDefault`` in
        src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs).
        """
        if self._warmed_up:
            return 200
        self._warmed_up = True
        if spec is None:
            return 200
        if spec.disabled:
            return 404
        name = str(spec.trigger.get("name"))

        def data(
            capabilities: Mapping[str, str],
        ) -> tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]:
            return [(name, pb.TypedData(json="{}")), *_other_inputs(spec)], {}

        attempt = await self._invoke(spec, data, _API_REASON)
        return 200 if attempt.error is None else 500

    async def _run(self, spec: FunctionSpec, data: InputBuilder, reason: str) -> None:
        await self._invoke(spec, data, reason)

    async def _invoke(
        self,
        spec: FunctionSpec,
        data: InputBuilder,
        reason: str,
        proxy: ProxiedRequest | None = None,
    ) -> _Attempt:
        """Run `spec` under its retry policy; the last attempt."""

        async def attempt(context: pb.RetryContext | None) -> _Attempt:
            outcome = await self._supervisor.invoke(
                spec, data, reason=reason, retry_context=context, proxy=proxy
            )
            http_value, error = self._report(outcome)
            return _Attempt(outcome, http_value, error)

        with request_trace():  # every attempt in one trace
            return await run_with_retries(
                self.policy(spec),
                attempt,
                _exception,
                function=spec.name,
                console=self.console,
                stop=self._stop,
            )

    def _report(self, outcome: InvocationOutcome) -> tuple[pb.TypedData | None, str | None]:
        """Log how an invocation ended and its outputs; (HTTP output value, error)."""
        spec = outcome.function
        error = outcome.error
        http_value: pb.TypedData | None = None
        lines: list[str] = []
        if error is None and outcome.response is not None:
            try:
                http_value, lines = _outputs(spec, outcome.response)
            except ConversionError as exc:
                error = f"the host cannot take this output: {exc}"
        millis = int(outcome.duration * 1000)
        trace = f", TraceId={current_trace_id()}" if current_trace_id() else ""
        if error is None:
            for line in lines:
                self.console.info(line)
            self.console.info(
                f"Executed 'Functions.{spec.name}' (Succeeded, Id={outcome.invocation_id},"
                f" Duration={millis}ms{trace})"
            )
        else:
            self.console.error(
                f"Executed 'Functions.{spec.name}' (Failed, Id={outcome.invocation_id},"
                f" Duration={millis}ms{trace})\n{error}"
            )
        return http_value, error

    # -- timers ------------------------------------------------------------------------------
    def start_timer(
        self,
        spec: FunctionSpec,
        schedule: CronSchedule | IntervalSchedule,
        run_on_startup: bool,
        *,
        enabled: bool = True,
    ) -> None:
        """Fire `spec` on `schedule` (at once first with `run_on_startup`) until stopped; a
        timer not `enabled` only has its schedule known (for firing it by hand)."""
        status = _TimerStatus(schedule)
        self._timer_status[spec.name] = status
        if enabled:
            status.record(datetime.datetime.now().astimezone(), ran=False)
            self._timers.append(
                asyncio.create_task(self._timer(spec, schedule, run_on_startup, status))
            )

    async def _timer(
        self,
        spec: FunctionSpec,
        schedule: CronSchedule | IntervalSchedule,
        run_on_startup: bool,
        status: _TimerStatus,
    ) -> None:
        last: datetime.datetime | None = None
        if run_on_startup:
            now = datetime.datetime.now().astimezone()
            await self._fire(spec, schedule, now, last)
            last = now
            status.record(now, ran=True)
        while not self.stopping:
            now = datetime.datetime.now().astimezone()
            due = schedule.next_after(now.replace(tzinfo=None))
            if due is None:
                self.console.warning(f"Timer '{spec.name}': the schedule {schedule} never fires.")
                return
            await asyncio.sleep(max(due.timestamp() - datetime.datetime.now().timestamp(), 0))
            fired = due.astimezone()
            await self._fire(spec, schedule, fired, last)
            last = fired
            status.record(fired, ran=True)

    async def _fire(
        self,
        spec: FunctionSpec,
        schedule: CronSchedule | IntervalSchedule,
        when: datetime.datetime,
        last: datetime.datetime | None,
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._firing.add(task)
        try:
            await self._fire_once(spec, schedule, when, last)
        finally:
            self._firing.discard(task)

    async def _fire_once(
        self,
        spec: FunctionSpec,
        schedule: CronSchedule | IntervalSchedule,
        when: datetime.datetime,
        last: datetime.datetime | None,
    ) -> None:
        upcoming = schedule.next_after(when.replace(tzinfo=None))
        next_run = upcoming.astimezone() if upcoming is not None else None
        name = str(spec.trigger.get("name"))

        def data(
            capabilities: Mapping[str, str],
        ) -> tuple[list[tuple[str, pb.TypedData]], dict[str, pb.TypedData]]:
            return [(name, timer_payload(last, next_run)), *_other_inputs(spec)], {}

        await self._invoke(spec, data, f"Timer fired at {when.isoformat()}")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _other_inputs(spec: FunctionSpec) -> list[tuple[str, pb.TypedData]]:
    """Non-trigger input bindings: the emulator has no storage, so they are null."""
    trigger = spec.trigger
    return [
        (str(b.get("name")), pb.TypedData())
        for b in spec.bindings
        if b is not trigger and str(b.get("direction", "in")).lower() in ("in", "inout")
    ]


def _exception(attempt: _Attempt) -> pb.RpcException | None:
    """The exception a failed attempt gives the next attempt's ``RetryContext``, shaped like
    the host's: its ``FunctionInvocationException`` around the worker's failure
    (``RpcException``) or the timeout, formatted by the SDK's ``ExceptionFormatter``
    (``SetRetryContext`` in the host's
    src/WebJobs.Script.Grpc/Extensions/ScriptInvocationContextExtensions.cs). None when the
    attempt succeeded."""
    if attempt.error is None:
        return None
    outcome = attempt.outcome
    result = outcome.response.result if outcome.response is not None else None
    if result is not None and result.exception is not None:
        worker = result.exception
        inner = (
            "Microsoft.Azure.WebJobs.Script.Workers.Rpc.RpcException : Result:"
            f" {result.status.name}\nException: {worker.message}\nStack: {worker.stack_trace}"
        )
    elif outcome.timed_out:
        inner = f"Microsoft.Azure.WebJobs.Host.FunctionTimeoutException : {attempt.error}"
    else:
        inner = f"System.InvalidOperationException : {attempt.error}"
    return pb.RpcException(
        source="Microsoft.Azure.WebJobs.Host",
        message=(
            "Microsoft.Azure.WebJobs.Host.FunctionInvocationException : Exception while"
            f" executing function: Functions.{outcome.function.name} ---> {inner}\n"
            "   End of inner exception"
        ),
    )


def _outputs(
    spec: FunctionSpec, response: pb.InvocationResponse
) -> tuple[pb.TypedData | None, list[str]]:
    """Split a response into the HTTP output and log lines for the other outputs.

    Raises:
        ConversionError: an output of a kind the host rejects (a collection or model binding
            data: the host's ``ToObject`` in GrpcMessageConversionExtensions.cs has no case
            for them), or a shared memory reference left unread (`Supervisor` reads them
            from their maps).
    """
    bindings = {str(b.get("name")): b for b in spec.bindings}
    outputs = {
        n: b
        for n, b in bindings.items()
        if str(b.get("direction", "in")).lower() in ("out", "inout")
    }
    values: list[tuple[str, pb.TypedData]] = []
    lines: list[str] = []
    for binding in response.output_data:
        if binding.rpc_shared_memory is not None:
            raise ConversionError(
                f"output {binding.name!r} refers to a shared memory map that was not read"
            )
        values.append((binding.name, binding.data if binding.data is not None else pb.TypedData()))
    if response.return_value is not None:
        kind = betterproto2.which_one_of(response.return_value, "data")[0]
        if "$return" in outputs:
            values.append(("$return", response.return_value))
        elif kind == "json":
            parsed = decode_output(response.return_value)
            if isinstance(parsed, dict):
                for key, value in parsed.items():
                    if key in outputs:
                        values.append((key, pb.TypedData(json=json.dumps(value))))
        elif kind:
            lines.append(
                "  the function returned a value but has no $return binding: the host ignores it"
            )
    http_value: pb.TypedData | None = None
    for name, data in values:
        decoded = decode_output(data)  # raises for kinds the host rejects
        target = outputs.get(name)
        if target is None:
            lines.append(f"  output {name!r} matches no output binding: the host ignores it")
            continue
        if str(target.get("type", "")).lower() == "http":
            http_value = data
            continue
        if decoded is None:
            continue
        lines.append(f"  output {name!r} ({target.get('type')}): {_show(decoded)}")
    return http_value, lines


def _show(value: Any) -> str:
    text = Console.value(value)
    return text if len(text) <= _SHOWN_VALUE else text[: _SHOWN_VALUE - 3] + "..."


def _response_object_warning(function: str, status: int, described: ResponseObject) -> str:
    def keys(names: tuple[str, ...]) -> str:
        quoted = [json.dumps(name, ensure_ascii=False) for name in names]
        return ", ".join(quoted[:-1]) + " and " + quoted[-1] if len(quoted) > 1 else quoted[0]

    ignored = f"; it ignored {keys(described.ignored)}" if described.ignored else ""
    return (
        f"Function '{function}': its HTTP output is a JSON object with a \"body\" key, which"
        f" the host reads as a description of the response: it answered {status} from"
        f" {keys(described.read)}{ignored}. To answer with a response, return a"
        " workerkit.HttpResponse; to send the object itself as JSON, return"
        " workerkit.HttpResponse.from_json(value). (Shown once per function.)"
    )
