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
exception, recorded, on failure. The API's default (proxy, no-op) provider means none is
configured: no span is started then, and the cost per invocation is parsing the context.

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
import re
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

from .._types import Invocation, TraceContext
from .._wire.primitives import fields, read_string_entry, read_text
from .._wire.schema import (
    RPC_TRACE_CONTEXT_ATTRIBUTES,
    RPC_TRACE_CONTEXT_BAGGAGE,
    RPC_TRACE_CONTEXT_TRACE_PARENT,
    RPC_TRACE_CONTEXT_TRACE_STATE,
)

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
    parent = state = ""
    attributes: dict[str, str] = {}
    baggage: dict[str, str] = {}
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == RPC_TRACE_CONTEXT_TRACE_PARENT:
            parent = read_text(value)
        elif number == RPC_TRACE_CONTEXT_TRACE_STATE:
            state = read_text(value)
        elif number == RPC_TRACE_CONTEXT_ATTRIBUTES:
            key, text = read_string_entry(value)
            attributes[key] = text
        elif number == RPC_TRACE_CONTEXT_BAGGAGE:
            key, text = read_string_entry(value)
            baggage[key] = text
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
    """The OpenTelemetry side of invocations (one per session)."""

    def __init__(self) -> None:
        from opentelemetry import baggage, context, trace

        self._baggage = baggage
        self._context = context
        self._trace = trace
        self._unconfigured = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._provider: object = None
        self._tracer: Any = None

    def parent(self, trace_context: TraceContext) -> Any:
        """The OpenTelemetry `Context` for the host's trace context; None when it holds
        nothing usable. Never raises."""
        try:
            parsed = parse_traceparent(trace_context.trace_parent)
            ctx = None
            if parsed is not None:
                trace = self._trace
                trace_id, span_id, flags = parsed
                state = trace_context.trace_state
                span_context = trace.SpanContext(
                    trace_id,
                    span_id,
                    is_remote=True,
                    trace_flags=trace.TraceFlags(flags & 0xFF),
                    trace_state=trace.TraceState.from_header([state]) if state else None,
                )
                ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
            for key, value in trace_context.baggage.items():
                ctx = self._baggage.set_baggage(key, value, ctx)
            return ctx
        except Exception as exc:  # whatever the host sent, the invocation runs
            log.debug("trace context %r not used: %r", trace_context, exc)
            return None

    def tracer(self) -> Any:
        """The tracer of the global TracerProvider, or None while none is configured (the
        API's proxy or no-op provider)."""
        provider = self._trace.get_tracer_provider()
        if provider is not self._provider:
            tracer = None
            if not isinstance(provider, self._unconfigured):
                from .. import __version__

                tracer = provider.get_tracer("workerkit", __version__)
            self._provider, self._tracer = provider, tracer
        return self._tracer

    def around(self, invocation: Invocation, call: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """Make the host's trace the current context of this task (before `call`, the
        hook's coroutine, starts), and wrap `call` in the invocation's span when a
        TracerProvider is configured."""
        ctx = self.parent(invocation.trace_context)
        try:
            tracer = self.tracer()
        except Exception as exc:
            log.warning("no span for invocation %s: %r", invocation.invocation_id, exc)
            tracer = None
        if tracer is None:
            if ctx is not None:
                self._context.attach(ctx)
            return call
        return self._spanned(tracer, invocation, ctx, call)

    async def _spanned(
        self, tracer: Any, invocation: Invocation, ctx: Any, call: Coroutine[Any, Any, Any]
    ) -> Any:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from ..errors import InvocationCancelled

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
            self._context.attach(self._trace.set_span_in_context(span, ctx))
        except Exception as exc:  # the SDK's problem must not be the invocation's
            log.warning("no span for invocation %s: %r", invocation.invocation_id, exc)
            if ctx is not None:
                self._context.attach(ctx)
            return await call
        try:
            value = await call
        except BaseException as exc:
            try:
                if isinstance(exc, InvocationCancelled | asyncio.CancelledError):
                    span.set_attribute("workerkit.outcome", "cancelled")
                else:
                    span.set_attribute("workerkit.outcome", "failure")
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, _describe(exc)))
            finally:
                span.end()
            raise
        span.set_attribute("workerkit.outcome", "success")
        span.end()
        return value


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
