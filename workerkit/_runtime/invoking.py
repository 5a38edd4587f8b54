"""Invocations: from an `InvocationRequest` to its one `InvocationResponse`.

`Invocations` runs each request as a task: it waits for a slot (`max_in_flight`), runs the
function's `on_invocation` through `Session.call`, encodes the response and sends it. The
rules (refusals, one answer per request, cancel, backpressure) are `protocol.Ledger`'s; this
module owns the tasks, the slots and the timers around them.

With HTTP streaming on (`session.proxy`), an HTTP-trigger invocation whose `RpcHttp` is
empty is a *proxied call*: before taking a slot it waits for its HTTP request
(`httpproxy.Proxied`), the hook sees that request, the hook's HTTP response is written to
it (a streamed body chunk by chunk, inside the invocation, so cancel and the host's timeout
reach it), and the `InvocationResponse` follows, without the HTTP output. Without the
proxy, a streamed response body is gathered first (`httpbody.gather`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._types import FunctionInfo, Invocation, InvocationResult, RetryContext, TraceContext
from .._values import HttpRequest
from .._wire.messages import RawInvocation, invocation_response
from .._wire.pb import pb
from .._wire.values import LazyValues, decode_value, encode_chunks, typed_data
from ..convert import ConversionError, HttpResponse
from ..errors import InvocationCancelled, MessageTooLarge, cancelled, failure
from .httpbody import gather, is_streamed
from .logs import current_invocation_id
from .protocol import Entry, Ledger
from .sharedmem import SharedInput, encode_outputs, raw_input, read_inputs
from .tracing import load as load_tracing
from .tracing import read_trace_context

if TYPE_CHECKING:
    from .httpproxy import Proxied
    from .session import Session

log = logging.getLogger("workerkit")

#: Seconds a cancelled ``async def`` invocation gets to end before it is answered Cancelled
#: anyway. A coroutine that honours cancellation ends within a step or two; one still running
#: after this swallowed the CancelledError (or cleans up slowly), and the host must not wait
#: on it: the host restarts a worker whose cancelled invocation is unanswered 2 s on.
CANCEL_GRACE = 0.25


@dataclass(eq=False)
class Running(Entry):
    """An invocation between its request and its response: the ledger's entry, plus what
    the runtime holds for it."""

    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    #: The task has begun: cancelling it now raises inside `_invoke`'s handlers. (A task
    #: cancelled before its first step would end without running them, and without a reply.)
    started: bool = False
    invocation: Invocation | None = None
    #: Answers Cancelled once `CANCEL_GRACE` has passed after a cancel (`cancel_overdue`).
    overdue: asyncio.TimerHandle | None = None
    #: A proxied HTTP call (HTTP streaming): its request's side; None for the others.
    proxied: Proxied | None = None
    #: Whether it was decided if this is a proxied call (it waits for its function's load).
    routed: bool = False


class Invocations:
    """The invocations of one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        options = session.options
        self.ledger = Ledger(options.max_in_flight + options.max_queued)
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(options.max_in_flight)
        #: OpenTelemetry (tracing.py), when installed: the host's trace around each hook.
        self.tracing = load_tracing()

    def running(self) -> list[Running]:
        """The open invocations (all entries of the ledger are `Running`s)."""
        return [entry for entry in self.ledger if isinstance(entry, Running)]

    def owing(self) -> set[asyncio.Task[None]]:
        """The invocations whose response is still to come: not those answered Cancelled
        that run on regardless (waiting for them would only delay the exit)."""
        detached = {r.task for r in self.running() if r.answered}
        return {task for task in self.tasks if task not in detached}

    def request(self, request: RawInvocation) -> None:
        request_id = request.request_id
        invocation_id = request.invocation_id
        running = Running(invocation_id=invocation_id, request_id=request_id)
        refusal = self.ledger.admit(running)
        if refusal is not None:
            log.error("refused invocation %r: %s", invocation_id, refusal)
            proxy = self.session.proxy
            if proxy is not None and self.ledger.get(invocation_id) is None:
                proxy.refused(invocation_id, refusal)  # its request, if any, is answered
            self.session._reply(
                request_id,
                invocation_response=pb.InvocationResponse(
                    invocation_id=invocation_id, result=failure(refusal)
                ),
            )
            return
        if self.session.proxy is not None and request.function_id not in self.session._loading:
            self._route(request, running)  # its request may be waiting already
        task = self.session._spawn(self._invoke(request, running))
        running.task = task
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if self.ledger.task_started():
            self.session.transport.reading.clear()  # resumed by _invocation_done
            if self.session.proxy is not None:
                self.session.proxy.reading(False)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.ledger.task_ended():
            self.session.transport.reading.set()
            if self.session.proxy is not None:
                self.session.proxy.reading(True)

    def _route(self, request: RawInvocation, running: Running) -> None:
        """Decide once whether `running` is a proxied call, and if so meet its request."""
        proxy = self.session.proxy
        if running.routed or proxy is None:
            return
        running.routed = True
        function = self.session.catalog.resolve(request.function_id)
        if isinstance(function, FunctionInfo) and _proxied_call(request, function):
            running.proxied = proxy.expect(running.invocation_id)

    def disconnected(self, invocation_id: str, reason: str) -> None:
        """The client of proxied call `invocation_id` went away: cancel the call."""
        running = self.ledger.get(invocation_id)
        if isinstance(running, Running) and not running.answered:
            log.info("invocation %s: %s; cancelling it", invocation_id, reason)
            self.cancel(running)

    async def _invoke(self, request: RawInvocation, running: Running) -> None:
        invocation_id = request.invocation_id
        running.started = True
        holding = False
        try:
            try:
                if running.cancel.is_set():  # cancelled before this task first ran
                    raise asyncio.CancelledError
                missing = await running.proxied.wait() if running.proxied else None
                if missing is None:
                    await self.slots.acquire()
                    holding = True
                    response = await self._execute(request, running)
                else:  # its proxied request never came (or gave up)
                    response = pb.InvocationResponse(
                        invocation_id=invocation_id, result=failure(missing)
                    )
            except asyncio.CancelledError:
                if self.session._closed:  # the stream is gone: nobody to answer
                    raise
                response = pb.InvocationResponse(invocation_id=invocation_id, result=cancelled())
            except Exception as exc:  # a workerkit bug must still cost only this invocation
                log.exception("internal error in invocation %s", invocation_id)
                response = pb.InvocationResponse(
                    invocation_id=invocation_id,
                    result=failure(f"workerkit internal error: {exc!r}"),
                )
            finally:
                self.ledger.release(running)
                if running.overdue is not None:
                    running.overdue.cancel()
                if running.proxied is not None:
                    how = "was cancelled" if running.cancel.is_set() else "ended"
                    running.proxied.ended(f"invocation {invocation_id} {how}")
            answering = self.ledger.claim_answer(running)
            kept = answering and isinstance(response, bytes)  # its output maps go with it
            self.session.shared.finished(invocation_id, answered=kept)  # or now and later, deleted
            if not answering:  # answered Cancelled: one reply only
                name = running.invocation.function.name if running.invocation else "?"
                log.info(
                    "function %r (invocation %s) ended after it was answered Cancelled;"
                    " what it returned is dropped",
                    name,
                    invocation_id,
                )
                return
            # The slot is held until the response is on the wire: with a host that reads
            # slowly, at most `max_in_flight` responses wait in memory.
            if isinstance(response, bytes):
                # Alone: no other invocation's reply can join this one in a write.
                alone = len(self.tasks) == 1
                await self.session.transport.send_and_wait(response, alone=alone)
            else:  # a Failure or Cancelled: uncommon, built with the generated messages
                await self.session.transport.send_and_wait(
                    pb.StreamingMessage(request_id=request.request_id, invocation_response=response)
                )
        finally:
            if holding:
                self.slots.release()

    async def _execute(
        self, request: RawInvocation, running: Running
    ) -> pb.InvocationResponse | bytes:
        """Run one invocation; the response as message, or as bytes on the fast path."""
        invocation_id = request.invocation_id
        function_id = request.function_id
        loading = self.session._loading.get(function_id)
        if loading is not None:
            await loading.wait()
        function = self.session.catalog.resolve(function_id)
        if isinstance(function, str):  # why there is none
            return pb.InvocationResponse(invocation_id=invocation_id, result=failure(function))
        if not running.routed and self.session.proxy is not None:  # it came during a load
            self._route(request, running)
            if running.proxied is not None and (missing := await running.proxied.wait()):
                return pb.InvocationResponse(invocation_id=invocation_id, result=failure(missing))
        try:
            shared = await read_inputs(request, self._in_pool) if request.shared else None
            invocation = _invocation(request, function, running.cancel, shared)
        except ConversionError as exc:
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(f"function {function.name}: {exc}"),
            )
        proxied = running.proxied
        current_invocation_id.set(invocation_id)
        encode = functools.partial(
            _response if proxied is None else _split_response,
            function,
            request.request_id,
            invocation_id,
            maps=self.session.shared.writer(invocation_id),
        )
        if proxied is not None:
            try:
                invocation = await proxied.attach(invocation)
            except Exception as exc:  # the client went away, or sent a malformed body
                log.warning("invocation %s: its proxied request failed: %s", invocation_id, exc)
                return pb.InvocationResponse(
                    invocation_id=invocation_id,
                    result=failure(f"the proxied HTTP request could not be read: {exc}"),
                )
        running.invocation = invocation
        gone: str | None = None
        try:
            work = self._hook_and_body(invocation, encode, proxied)
            tracing = self.tracing
            # The trace's span covers a streamed body too: it is the function's code.
            response, gone = await (work if tracing is None else tracing.around(invocation, work))
        except (asyncio.CancelledError, InvocationCancelled) as exc:
            if running.cancel.is_set() or task_cancelled():
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return pb.InvocationResponse(invocation_id=invocation_id, result=cancelled())
            # Raised by the function itself, with no cancel asked for: a failure like any other
            # (Cancelled tells the host it asked for this, which it did not).
            log.error("function %s failed: %r (nothing cancelled it)", function.name, exc)
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(
                    f"{type(exc).__name__} raised by the function, but nothing cancelled"
                    " the invocation",
                    user=True,
                    source=function.name,
                ),
            )
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code too
            log.error("function %s failed: %s", function.name, exc, exc_info=True)
            return pb.InvocationResponse(
                invocation_id=invocation_id, result=failure(exc, user=True, source=function.name)
            )
        if gone is not None:
            log.warning("function %s: %s", function.name, gone)
            return pb.InvocationResponse(invocation_id=invocation_id, result=failure(gone))
        assert isinstance(response, bytes)
        limit = self.session.args.max_message_length
        if len(response) > limit:
            too_big = MessageTooLarge(len(response), limit, f"the response of {invocation_id}")
            log.error("%s", too_big)
            return pb.InvocationResponse(
                invocation_id=invocation_id,
                result=failure(f"the function's result cannot be sent to the host: {too_big}"),
            )
        return response

    async def _hook_and_body(
        self, invocation: Invocation, encode: Callable[[Any], Any], proxied: Proxied | None
    ) -> tuple[Any, str | None]:
        """``on_invocation``, then a streamed HTTP body (written to the proxied request, or
        gathered for the gRPC reply): (the response, why the proxied client is gone)."""
        response: Any = await self.session.call("on_invocation", invocation, encode)
        if proxied is not None:
            response, http = response
            return response, await proxied.respond(http, self._in_pool)
        if isinstance(response, _Gather):  # a streamed body, for the gRPC path
            limit = self.session.args.max_message_length
            result = await response.gathered(limit, self._in_pool)
            response = await self._in_pool(functools.partial(encode, result))
        return response, None

    def cancel_request(self, request_id: str, request: pb.InvocationCancel) -> None:
        running = self.ledger.get(request.invocation_id)
        if not isinstance(running, Running):
            log.debug("cancel of %s: not running (finished or unknown)", request.invocation_id)
            return
        self.cancel(running)

    def cancel(self, running: Running) -> None:
        first = self.ledger.request_cancel(running)
        running.cancel.set()
        if running.task is not None and running.started:
            running.task.cancel()
        if first and not running.answered:
            running.overdue = self.session._loop.call_later(
                CANCEL_GRACE, self.cancel_overdue, running
            )
        if running.invocation is not None and "on_cancel" in self.session._overridden:
            hook = functools.partial(self.session._quietly, "on_cancel", running.invocation)
            if self.tracing is None:
                self.session._spawn(hook())
            else:  # a hook of this invocation: in its trace
                self.session._spawn(self.tracing.within(running.invocation, hook))

    def _in_pool(self, call: Callable[[], Any]) -> Any:
        """Run `call` in the hook thread pool with this task's context (its logs)."""
        context = contextvars.copy_context()
        return self.session._loop.run_in_executor(self.session._pool, context.run, call)

    def cancel_overdue(self, running: Running) -> None:
        """A cancelled invocation that has not ended `CANCEL_GRACE` later (an ``async def``
        that swallows CancelledError, say), or when the worker stops, is answered Cancelled
        now, as a plain def stuck in its thread is. Its task runs on, detached: it keeps its
        place among the `max_in_flight` (it does hold memory and the loop), and whatever it
        ends with is dropped, so the invocation still gets exactly one response."""
        if running.overdue is not None:
            running.overdue.cancel()
            running.overdue = None
        task = running.task
        if (
            self.session._closed
            or task is None
            or task.done()
            or not self.ledger.claim_answer(running)
        ):
            return
        invocation_id = running.invocation_id
        invocation = running.invocation
        name = invocation.function.name if invocation is not None else "?"
        if running.proxied is not None:
            running.proxied.ended("it was answered Cancelled")
        log.warning(
            "function %r (invocation %s) still runs %g s after it was cancelled: answered"
            " Cancelled; it keeps running, and its slot of max_in_flight, until it returns."
            " Does it swallow asyncio.CancelledError (a catch-all `except BaseException`)?",
            name,
            invocation_id,
            CANCEL_GRACE,
        )
        self.session._reply(
            running.request_id,
            invocation_response=pb.InvocationResponse(
                invocation_id=invocation_id, result=cancelled()
            ),
        )


def task_cancelled() -> bool:
    """Whether the current task is being cancelled (by us: a CancelledError raised by user
    code leaves the count at 0)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def cancelled_by_us(exc: BaseException) -> bool:
    """`exc` is the cancellation of this task (the stream ended, or we are stopping); a
    CancelledError a hook raised or let through on its own is the hook's failure, and its
    request still gets a reply."""
    return isinstance(exc, asyncio.CancelledError) and task_cancelled()


def captured(
    method: Callable[[Any], Any], arg: Any, then: Callable[[Any], Any] | None
) -> tuple[bool, Any, bool]:
    """Run a plain-def hook in a pool thread, and `then` on its result unless that is
    awaitable: (ok, the value or the exception, whether `then` ran). The exception is
    returned, not raised: a future's exception is thrown into the awaiting coroutine, and a
    thrown GeneratorExit closes that coroutine instead of reaching its handlers (the reply
    would be lost)."""
    try:
        value = method(arg)
        if then is None or inspect.isawaitable(value):
            return True, value, False
        return True, then(value), True
    except BaseException as exc:
        return False, exc, False


def _invocation(
    request: RawInvocation,
    function: FunctionInfo,
    cancel: threading.Event,
    shared: dict[int, SharedInput | None] | None = None,
) -> Invocation:
    """The `Invocation` the hook sees; `shared`: the inputs read from maps (`read_inputs`)."""
    inputs: dict[str, Any] = {}
    raw: dict[str, Any] = {}  # raw TypedData bytes, or a SharedInput
    assert request.inputs is not None and request.metadata is not None
    for position, (name, data, in_map) in enumerate(request.inputs):
        if in_map:
            value = shared.get(position) if shared else None
            inputs[name] = value.value if value is not None else None
            if value is not None:
                raw[name] = value
            continue
        if data is not None:
            raw[name] = data
        try:
            inputs[name] = decode_value(data)
        except ConversionError as exc:
            raise ConversionError(f"cannot read input {name!r}: {exc}") from None
    trace = read_trace_context(request.trace) if request.trace is not None else _NO_TRACE
    retry = None
    if request.retry is not None:
        context = pb.RetryContext.parse(bytes(request.retry))
        retry = RetryContext(
            context.retry_count,
            context.max_retry_count,
            context.exception.message if context.exception is not None else "",
        )
    return Invocation(
        invocation_id=request.invocation_id,
        function=function,
        inputs=inputs,
        raw_inputs=LazyValues(raw, raw_input),
        trigger_metadata=LazyValues(request.metadata, _metadata_value),
        trace_context=trace,
        retry_context=retry,
        _cancel=cancel,
    )


_NO_TRACE = TraceContext()
#: Puts a large output into a shared memory map (`SharedMemory.writer`); None: inline only.
Writer = Callable[[Any], bytes | None] | None


def _metadata_value(data: memoryview) -> Any:
    try:
        return decode_value(data)
    except ConversionError:  # metadata is informational: keep what the host sent
        return typed_data(data)


def _proxied_call(request: RawInvocation, function: FunctionInfo) -> bool:
    """An HTTP-trigger invocation whose request the host forwards to the worker's server:
    its `RpcHttp` is empty but for route parameters (a host that sends the whole request
    there is answered the usual way)."""
    trigger = function.trigger
    if trigger is None or trigger.type.lower() != "httptrigger" or request.inputs is None:
        return False
    for name, data, shared in request.inputs:
        if name == trigger.name:
            try:
                value = decode_value(data) if data is not None and not shared else None
            except ConversionError:
                return False
            return isinstance(value, HttpRequest) and not value.method and not value.url
    return False


def _http_output(function: FunctionInfo) -> str | None:
    """The name of the function's HTTP output binding, if it has one."""
    names = [b.name for b in function.bindings.values() if b.type.lower() == "http" and b.is_output]
    return names[0] if len(names) == 1 else None


def _split_response(
    function: FunctionInfo, request_id: str, invocation_id: str, result: Any, *, maps: Writer = None
) -> tuple[bytes, Any]:
    """For a proxied call: the InvocationResponse without the HTTP output (the host takes
    the response from the worker's server; other outputs go as usual), and the HTTP output's
    value (None when it got none)."""
    if isinstance(result, InvocationResult):
        value, outputs = result.return_value, dict(result.outputs)
    else:
        value, outputs = result, {}
    if "$return" in outputs and value is None:
        value = outputs.pop("$return")
    name = _http_output(function)
    http = None
    if name == "$return" or (name is not None and isinstance(value, HttpResponse)):
        http, value = value, None
    elif name is not None:
        http = outputs.pop(name, None)
    rest = InvocationResult(value, outputs)
    return _encode(function, request_id, invocation_id, rest, maps=maps), http


class _Gather:
    """A result with a streamed HTTP response body, on the gRPC path: the body is gathered
    on the event loop, then the result is encoded as usual."""

    def __init__(self, result: Any) -> None:
        self.result = result

    async def gathered(self, limit: int, in_pool: Any) -> Any:
        result = self.result
        if isinstance(result, HttpResponse):
            return await gather(result, limit, in_pool)
        assert isinstance(result, InvocationResult)
        value = result.return_value
        if isinstance(value, HttpResponse) and is_streamed(value.body):
            value = await gather(value, limit, in_pool)
        outputs = dict(result.outputs)
        for name, output in outputs.items():
            if isinstance(output, HttpResponse) and is_streamed(output.body):
                outputs[name] = await gather(output, limit, in_pool)
        return InvocationResult(value, outputs)


def _has_streamed_body(result: Any) -> bool:
    if isinstance(result, HttpResponse):
        return is_streamed(result.body)
    if isinstance(result, InvocationResult):
        values = [result.return_value, *result.outputs.values()]
        return any(isinstance(v, HttpResponse) and is_streamed(v.body) for v in values)
    return False


def _response(
    function: FunctionInfo, request_id: str, invocation_id: str, result: Any, *, maps: Writer = None
) -> bytes | _Gather:
    """The InvocationResponse, encoded, for what `on_invocation` returned; raises (a user
    error: the invocation fails) when the result cannot be sent. A streamed HTTP body is
    handed back (`_Gather`) to be collected on the event loop first. `maps`
    (`SharedMemory.writer`) puts large outputs in shared memory, when it is on."""
    if _has_streamed_body(result):
        return _Gather(result)
    return _encode(function, request_id, invocation_id, result, maps=maps)


def _encode(
    function: FunctionInfo, request_id: str, invocation_id: str, result: Any, *, maps: Writer = None
) -> bytes:
    """`_response` for a result without streamed bodies."""
    if isinstance(result, InvocationResult):
        value, outputs = result.return_value, dict(result.outputs)
    else:
        value, outputs = result, {}
    if "$return" in outputs:
        if value is not None:
            raise ValueError("both return_value and outputs['$return'] are set; use one")
        value = outputs.pop("$return")
    bindings = function.bindings
    if isinstance(value, HttpResponse) and "$return" not in bindings:
        # An HTTP response returned from a function whose HTTP output is named: put it there.
        # Binding types compare ignoring case, as the host compares them ("Http" is "http").
        http_outputs = [
            b.name for b in bindings.values() if b.type.lower() == "http" and b.is_output
        ]
        if len(http_outputs) == 1 and http_outputs[0] not in outputs:
            outputs[http_outputs[0]] = value
            value = None
    if value is not None and bindings and "$return" not in bindings:
        # The host would read a JSON object's keys as output bindings (legacy behaviour).
        raise ValueError(
            f"function {function.name} returned a value but has no '$return' binding: return"
            " None, or InvocationResult(outputs={...}) for its named output bindings"
        )
    if outputs and bindings:
        unknown = [name for name in outputs if name not in bindings or not bindings[name].is_output]
        if unknown:
            declared = ", ".join(n for n, b in bindings.items() if b.is_output) or "none"
            raise ValueError(
                f"outputs {', '.join(map(repr, unknown))} are not output bindings of function "
                f"{function.name} (its output bindings: {declared})"
            )
    try:
        inline, shared = encode_outputs(outputs, maps)
        return invocation_response(
            request_id,
            invocation_id,
            None if value is None else encode_chunks(value),
            inline,
            shared,
        )
    except ConversionError as exc:
        raise ConversionError(
            f"cannot send the result of function {function.name}: {exc}"
        ) from None
