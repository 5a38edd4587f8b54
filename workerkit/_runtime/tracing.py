"""Distributed tracing: user code runs inside the host's trace (OpenTelemetry, optional).

Every `InvocationRequest` carries the host's W3C trace context (`RpcTraceContext`:
``trace_parent``, ``trace_state``, ``attributes`` and, from newer hosts, ``baggage``), read
into `Invocation.trace_context` whether OpenTelemetry is installed or not.

With ``opentelemetry-api`` importable (``workerkit[otel]``), `Tracing.around` makes that
context the current OpenTelemetry context of the task that runs ``on_invocation`` before the
hook starts: an ``async def`` hook runs in that task, a plain ``def`` hook in a pool thread
with a copy of its context (`Session.call`), and a thread the hook starts with
``contextvars.copy_context()`` inherits it too. A ``trace_parent`` that is not a valid W3C
``traceparent`` (empty, malformed, all-zero ids, version ``ff``) means no parent; it is never
an error. Baggage becomes OpenTelemetry baggage.

When a real TracerProvider is set globally (by the app: at import, in ``on_init``, through
``opentelemetry-instrument``, or ``OTEL_PYTHON_TRACER_PROVIDER``; or by workerkit from the
standard ``OTEL_TRACES_EXPORTER`` variable when ``opentelemetry-sdk`` is installed and the
app set none, `configure_from_environment`), each invocation also gets a span of its own,
named after the function, child of the host's span, with the hook's own spans as its
children: ``faas.name``, ``faas.invocation_id``, ``faas.trigger``,
``workerkit.trigger_type``, ``workerkit.outcome`` (success, failure, cancelled) and the
exception, recorded, on failure; the span ends when the function's work does, a streamed
HTTP body included. The API's default (proxy, no-op) provider means none is configured: no
span is started then, and the cost per invocation is about a microsecond (the context is
built and attached; the ``trace_parent`` is parsed only if something asks for the current
span's context). Whatever the SDK or an exporter raises is logged, never the invocation's.

Without the package nothing here is imported beyond the first attempt (`load` returns None)
and invocations carry only `Invocation.trace_context`.

The opt-in app setting ``WORKERKIT_ENABLE_OPENTELEMETRY`` (`wants_opentelemetry`) reports
the capability ``WorkerOpenTelemetryEnabled`` at init and after an environment reload; the
host then stops exporting the function's logs through its own OpenTelemetry pipeline
(src/WebJobs.Script/Diagnostics/OpenTelemetry/OpenTelemetryConfigurationExtensions.cs) and
expects the worker's telemetry to go there itself. It does not govern the context above,
which costs little and never duplicates anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from .._types import Invocation, TraceContext
from .._wire.messages import read_trace

log = logging.getLogger("workerkit")

#: The app setting that makes the worker report `CAPABILITY`. Named as the official
#: workers name theirs (PYTHON_ENABLE_OPENTELEMETRY in azure-functions-python-worker,
#: JAVA_ENABLE_OPENTELEMETRY in the Java worker), with workerkit's own prefix (as
#: WORKERKIT_HTTP_STREAMING): a custom worker has no language prefix of the host's.
OTEL_SETTING = "WORKERKIT_ENABLE_OPENTELEMETRY"
#: The host reads it with bool.TryParse (GrpcWorkerChannel, ScriptHost.WorkerOpenTelemetryEnabled).
CAPABILITY = "WorkerOpenTelemetryEnabled"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})

#: W3C traceparent: version-traceid-parentid-flags, lower-case hex; versions after 00 may
#: append fields ("-..."), 00 may not.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_EMPTY: Mapping[str, str] = {}
#: A W3C ``tracestate`` list member: key (simple, or tenant@system) = value (printable ASCII
#: but ``,`` and ``=``, at most 256 characters, not ending in a space).
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_MAX_TRACESTATE_MEMBERS = 32
#: The API reads a TracerProvider to load from it (an entry point name) when none is set.
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"
_UNSET: Any = object()

#: `faas.trigger` (OpenTelemetry semantic conventions) by binding type, lower case.
_FAAS_TRIGGERS = {
    "httptrigger": "http",
    "timertrigger": "timer",
    "queuetrigger": "pubsub",
    "servicebustrigger": "pubsub",
    "eventhubtrigger": "pubsub",
    "eventgridtrigger": "pubsub",
    "kafkatrigger": "pubsub",
    "rabbitmqtrigger": "pubsub",
    "blobtrigger": "datasource",
    "cosmosdbtrigger": "datasource",
    "sqltrigger": "datasource",
}


def wants_opentelemetry(option: bool | None, environ: Mapping[str, str]) -> bool:
    """Report `CAPABILITY`? `option` (`WorkerOptions.opentelemetry`) when set, else the app
    setting in `environ`; a value that is neither true nor false is logged and means no."""
    if option is not None:
        return option
    value = environ.get(OTEL_SETTING, "").strip()
    if value.lower() in _TRUE:
        return True
    if value.lower() not in _FALSE:
        log.warning("%s=%r is neither true nor false: taken as false", OTEL_SETTING, value)
    return False


def read_trace_context(view: memoryview) -> TraceContext:
    """An `RpcTraceContext` as read from the wire (baggage included, when a newer host sends
    it)."""
    parent, state, attributes, baggage = read_trace(view)
    return TraceContext(parent, state, attributes, baggage or _EMPTY)


def parse_traceparent(header: str) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C ``traceparent``; None otherwise."""
    match = _TRACEPARENT.fullmatch(header.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def parse_tracestate(header: str) -> list[tuple[str, str]] | None:
    """The members of a W3C ``tracestate`` in order; None when it is not valid (a member
    that is not key=value, a key twice, more than 32 members): then it is dropped whole, and
    the trace parent is kept. Empty members and blanks around members are allowed."""
    pairs: list[tuple[str, str]] = []
    keys: set[str] = set()
    for member in header.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match[1] in keys:
            return None
        keys.add(match[1])
        pairs.append((match[1], match[2]))
    return pairs if len(pairs) <= _MAX_TRACESTATE_MEMBERS else None


def load() -> Tracing | None:
    """Tracing, when ``opentelemetry-api`` can be imported; None (and nothing else done)
    otherwise."""
    try:
        return Tracing()
    except ImportError:
        return None
    except Exception as exc:  # a broken installation must not stop the worker
        log.warning("OpenTelemetry could not be loaded, tracing is off: %r", exc)
        return None


class Tracing:
    """The OpenTelemetry side of invocations (one per session).

    Per invocation, with no SDK configured, this costs well under a microsecond or two
    (benchmarks/README.md): the host's ``trace_parent`` is parsed only when something asks
    the current span for its context (`_host_span_class`), and whether a TracerProvider is
    configured is a look at the API's global until one is (it can be set only once).
    """

    def __init__(self) -> None:
        from opentelemetry import baggage, context, trace

        self._baggage = baggage
        self._attach = context.attach
        self._trace = trace
        self._unconfigured = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._provider: object = None
        self._tracer: Any = None
        #: The provider found is the API's global, which is set once: nothing to look up.
        self._settled = False
        #: ``OTEL_PYTHON_TRACER_PROVIDER`` names a provider the API loads on first use.
        self._named = _PROVIDER_VARIABLE in os.environ
        self._span_class = _host_span_class(trace)
        self._warned = False

    def parent(self, trace_context: TraceContext) -> Any:
        """The OpenTelemetry `Context` for the host's trace context (its span's context
        parsed when first asked for: invalid means no parent); None when the host sent no
        ``trace_parent`` and no baggage. Never raises."""
        try:
            ctx = None
            if trace_context.trace_parent:
                span = self._span_class(trace_context.trace_parent, trace_context.trace_state)
                ctx = self._trace.set_span_in_context(span)
            if trace_context.baggage:
                for key, value in trace_context.baggage.items():
                    ctx = self._baggage.set_baggage(key, value, ctx)
            return ctx
        except Exception as exc:  # whatever the host sent, the invocation runs
            log.debug("trace context %r not used: %r", trace_context, exc)
            return None

    def refresh(self, environ: Mapping[str, str]) -> None:
        """The environment changed (init, reload): is a provider named in it?"""
        self._named = _PROVIDER_VARIABLE in environ

    def tracer(self) -> Any:
        """The tracer of the global TracerProvider, or None while none is configured (the
        API's proxy or no-op provider)."""
        if self._settled:
            return self._tracer
        trace = self._trace
        # Until a provider is set, the API's global is None; reading it here spares the
        # environment look-up `get_tracer_provider` does on every call. (Without that global
        # in some other API version, every call asks the API.)
        if getattr(trace, "_TRACER_PROVIDER", _UNSET) is None and not self._named:
            return None
        provider = trace.get_tracer_provider()
        if provider is not self._provider:
            tracer = None
            if not isinstance(provider, self._unconfigured):
                from .. import __version__

                tracer = provider.get_tracer("workerkit", __version__)
            self._provider, self._tracer = provider, tracer
        self._settled = getattr(trace, "_TRACER_PROVIDER", _UNSET) is provider
        return self._tracer

    def around(self, invocation: Invocation, call: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """Make the host's trace the current context of this task (before `call`, the
        hook's coroutine and, for a streamed HTTP body, the body's, starts), and wrap `call`
        in the invocation's span when a TracerProvider is configured."""
        ctx = self.parent(invocation.trace_context)
        try:
            tracer = self.tracer()
        except Exception as exc:
            self._complain(invocation, "no span", exc)
            tracer = None
        if tracer is None:
            if ctx is not None:
                self._attach(ctx)  # this task's own context: it ends with the task
            return call
        return self._spanned(tracer, invocation, ctx, call)

    async def within(
        self, invocation: Invocation, call: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Any:
        """Run `call()` (another hook of `invocation`, e.g. ``on_cancel``, as the coroutine
        of a task of its own) in the host's trace of `invocation`. (A factory: a task
        cancelled before it starts then leaves no coroutine that was never awaited.)"""
        ctx = self.parent(invocation.trace_context)
        if ctx is not None:
            self._attach(ctx)
        return await call()

    async def _spanned(
        self, tracer: Any, invocation: Invocation, ctx: Any, call: Coroutine[Any, Any, Any]
    ) -> Any:
        from opentelemetry.trace import SpanKind

        function = invocation.function
        trigger = function.trigger
        trigger_type = trigger.type if trigger is not None else ""
        try:
            span = tracer.start_span(
                function.name,
                context=ctx,
                kind=SpanKind.SERVER,
                attributes={
                    "faas.name": function.name,
                    "faas.invocation_id": invocation.invocation_id,
                    "faas.trigger": _FAAS_TRIGGERS.get(trigger_type.lower(), "other"),
                    "workerkit.trigger_type": trigger_type,
                },
                record_exception=False,
                set_status_on_exception=False,
            )
            self._attach(self._trace.set_span_in_context(span, ctx))
        except Exception as exc:  # the SDK's problem must not be the invocation's
            self._complain(invocation, "no span", exc)
            if ctx is not None:
                self._attach(ctx)
            return await call
        try:
            value = await call
        except BaseException as exc:
            self._end(span, invocation, exc)
            raise
        self._end(span, invocation, None)
        return value

    def _end(self, span: Any, invocation: Invocation, exc: BaseException | None) -> None:
        """Record how the invocation ended on its span and end it. Never raises: a span
        processor or exporter that fails does not change the invocation's reply."""
        from opentelemetry.trace import Status, StatusCode

        from ..errors import InvocationCancelled

        try:
            if exc is None:
                # Cancelled but returned anyway (answered Cancelled once overdue).
                outcome = "cancelled" if invocation.cancelled else "success"
                span.set_attribute("workerkit.outcome", outcome)
            elif isinstance(exc, InvocationCancelled | asyncio.CancelledError):
                span.set_attribute("workerkit.outcome", "cancelled")
            else:
                span.set_attribute("workerkit.outcome", "failure")
                span.set_attribute("error.type", type(exc).__qualname__)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, _describe(exc)))
        except Exception as problem:
            self._complain(invocation, "its span is incomplete", problem)
        try:
            span.end()
        except Exception as problem:
            self._complain(invocation, "its span was not ended cleanly", problem)

    def _complain(self, invocation: Invocation, what: str, exc: Exception) -> None:
        """A warning the first time OpenTelemetry fails us, debug after that."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "invocation %s: %s (OpenTelemetry): %r", invocation.invocation_id, what, exc)


def _host_span_class(trace: Any) -> Any:
    """The span that stands for the host's span: non-recording, its `SpanContext` parsed
    from the ``traceparent`` and ``tracestate`` text when first asked for (most invocations
    never ask), the same for every thread after that. An invalid ``traceparent`` gives the
    invalid span context, which every OpenTelemetry part reads as "no parent"."""
    flags = [trace.TraceFlags(value) for value in range(256)]
    invalid = trace.INVALID_SPAN_CONTEXT
    empty_state = trace.TraceState()

    def span_context(parent: str, state: str) -> Any:
        try:
            parsed = parse_traceparent(parent)
            if parsed is None:
                return invalid
            trace_id, span_id, flag_bits = parsed
            pairs = parse_tracestate(state) if state else None
            return trace.SpanContext(
                trace_id,
                span_id,
                is_remote=True,
                trace_flags=flags[flag_bits],
                trace_state=trace.TraceState(pairs) if pairs else empty_state,
            )
        except Exception as exc:  # pragma: no cover - parsing above does not raise
            log.debug("trace parent %r not used: %r", parent, exc)
            return invalid

    class HostSpan(trace.NonRecordingSpan):  # type: ignore[misc]
        __slots__ = ("_built", "_parent", "_state")

        def __init__(self, parent: str, state: str) -> None:
            self._parent, self._state = parent, state
            self._built: Any = None

        def get_span_context(self) -> Any:
            built = self._built
            if built is None:
                built = self._built = span_context(self._parent, self._state)
            return built

        @property
        def _context(self) -> Any:  # what NonRecordingSpan keeps (its __repr__ reads it)
            return self.get_span_context()

    return HostSpan


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # a __str__ that raises
        return type(exc).__name__


def settings(
    tracing: Tracing | None, option: bool | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """At init and after an environment reload (the host's environment in place, the app's
    ``on_init`` done): configure the SDK from ``OTEL_*`` if asked, and the capabilities to
    add. Never raises."""
    try:
        if tracing is not None:
            tracing.refresh(environ)
        configure_from_environment(tracing, environ)
        return capabilities(tracing, wants_opentelemetry(option, environ))
    except Exception as exc:  # pragma: no cover - both parts catch their own errors
        log.warning("OpenTelemetry settings not applied: %r", exc)
        return {}


def capabilities(tracing: Tracing | None, wanted: bool) -> dict[str, str]:
    """What to add to the capabilities at init or after a reload: `CAPABILITY` when opted
    in (with or without the package: the app may export its telemetry by other means)."""
    if tracing is None and wanted:
        log.info(
            "%s is on, but opentelemetry-api is not installed (workerkit[otel]): functions"
            " do not run in the host's trace",
            OTEL_SETTING,
        )
    return {CAPABILITY: "true"} if wanted else {}


def configure_from_environment(tracing: Tracing | None, environ: Mapping[str, str]) -> None:
    """Set a global SDK TracerProvider from the standard variables, when the app has set
    none, ``OTEL_TRACES_EXPORTER`` names exporters (not ``none``) and ``opentelemetry-sdk``
    is installed: each exporter (``console``, ``otlp``, … as registered by installed
    packages under the ``opentelemetry_traces_exporter`` entry points) behind a batch
    processor; the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and the
    sampler (``OTEL_TRACES_SAMPLER``) as the SDK reads them. Never raises."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if tracing is None or not names or names == ["none"]:
        return
    try:
        if tracing.tracer() is not None:  # the app configured one: it wins
            return
        from importlib.metadata import entry_points

        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER=%s is set, but opentelemetry-sdk is not installed: no spans"
            " are exported",
            ",".join(names),
        )
        return
    except Exception as exc:
        log.warning("OpenTelemetry could not be configured: %r", exc)
        return
    try:
        provider = TracerProvider(resource=Resource.create())
        found = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
        for name in names:
            entry = found.get(name)
            if entry is None:
                log.warning(
                    "OTEL_TRACES_EXPORTER: no installed package provides the %r exporter", name
                )
                continue
            provider.add_span_processor(BatchSpanProcessor(entry.load()()))
        trace.set_tracer_provider(provider)
        log.info("OpenTelemetry: spans exported to %s (OTEL_TRACES_EXPORTER)", ",".join(names))
    except Exception as exc:
        log.warning("OpenTelemetry could not be configured from OTEL_*: %r", exc)
