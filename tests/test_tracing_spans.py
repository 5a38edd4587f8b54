"""Issue 17: with an OpenTelemetry SDK configured (a real TracerProvider set globally, spans
kept by an InMemorySpanExporter), one span per invocation, child of the host's span, the
hook's own spans its children, failures recorded. In-process workers under a real gRPC
`TestHost` (the provider is this process's). And ``OTEL_TRACES_EXPORTER`` configuring the
SDK in a worker process of its own."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import arun, until
from example_apps import EXAMPLES, SUCCESS, function_id, load_app
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import workerkit
from workerkit import HttpRequest, Invocation, InvocationError
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import TestHost, binding

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
WORKER = EXAMPLES / "python" / "worker.py"
tracer = trace.get_tracer("tests.tracing")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """This process's global TracerProvider (set once per process), exporting here."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


class Spanning(workerkit.Worker):
    """``work`` (async def) opens a span of its own; ``fail`` raises; ``stop`` is cancelled."""

    runtime_name = "tracing-spans"
    #: Invocation ids of ``stop`` calls under way.
    running: set[str] = set()

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        if name == "fail":
            raise InvocationError("no luck")
        if name == "stop":
            self.running.add(invocation.invocation_id)
            await asyncio.sleep(60)
        with tracer.start_as_current_span("inner"):
            await asyncio.sleep(0)
        return None


class SyncSpanning(Spanning):
    def on_invocation(self, invocation: Invocation) -> Any:  # type: ignore[override]
        if invocation.function.name == "fail":
            raise ValueError("bad input")
        with tracer.start_as_current_span("inner"):
            return None


def spans_of(exporter: InMemorySpanExporter, invocation_id: str) -> list[Any]:
    """The invocation's span and the spans under it."""
    spans = exporter.get_finished_spans()
    own = [s for s in spans if s.attributes.get("faas.invocation_id") == invocation_id]
    ids = {s.context.span_id for s in own}
    return own + [s for s in spans if s.parent is not None and s.parent.span_id in ids]


@pytest.mark.parametrize("worker_class", [Spanning, SyncSpanning], ids=["async", "plain"])
def test_one_span_per_invocation_parented_on_the_hosts_span(
    exporter: InMemorySpanExporter, worker_class: type[Spanning]
) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(worker_class())).connection
            await conn.init()
            work = await conn.load_function(
                "work", bindings={"req": binding("httpTrigger"), "$return": binding("http", "out")}
            )
            fail = await conn.load_function("fail", bindings={"msg": binding("queueTrigger")})
            context = pb.RpcTraceContext(trace_parent=PARENT)
            pending = await conn.start_invocation(
                work.function_id,
                {"req": HttpRequest("GET", "http://x/api/work")},
                trace_context=context,
            )
            ok = await pending.result(30)
            assert ok.result.status == SUCCESS
            own, inner = spans_of(exporter, ok.invocation_id)
            assert own.name == "work" and own.kind == SpanKind.SERVER
            assert format(own.context.trace_id, "032x") == TRACE_ID
            assert own.parent is not None and format(own.parent.span_id, "016x") == SPAN_ID
            assert own.parent.is_remote
            assert dict(own.attributes) == {
                "faas.name": "work",
                "faas.invocation_id": ok.invocation_id,
                "faas.trigger": "http",
                "workerkit.trigger_type": "httpTrigger",
                "workerkit.outcome": "success",
            }
            assert own.status.status_code == StatusCode.UNSET
            assert inner.name == "inner" and inner.parent.span_id == own.context.span_id
            assert inner.context.trace_id == own.context.trace_id

            pending = await conn.start_invocation(
                fail.function_id, {"msg": "x"}, trace_context=context
            )
            failed = await pending.result(30)
            assert failed.result.status != SUCCESS
            (span,) = spans_of(exporter, failed.invocation_id)
            assert span.attributes["workerkit.outcome"] == "failure"
            assert span.attributes["faas.trigger"] == "pubsub"
            assert span.status.status_code == StatusCode.ERROR
            (event,) = span.events
            assert event.name == "exception"
            assert event.attributes["exception.message"] in ("no luck", "bad input")
            await conn.terminate()

    arun(scenario())


def test_no_parent_gives_a_root_span_and_a_cancel_is_recorded(
    exporter: InMemorySpanExporter,
) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(Spanning())).connection
            await conn.init()
            stop = await conn.load_function("stop", bindings={"msg": binding("queueTrigger")})
            work = await conn.load_function("work", bindings={"msg": binding("timerTrigger")})
            done = await conn.invoke(work.function_id, {"msg": "{}"})
            own, _ = spans_of(exporter, done.invocation_id)
            assert own.parent is None and own.attributes["faas.trigger"] == "timer"
            pending = await conn.start_invocation(stop.function_id, {"msg": "x"})
            await until(lambda: pending.invocation_id in Spanning.running)
            await conn.cancel(pending.invocation_id)
            reply = await pending.result(30)
            assert reply.result.status == pb.StatusResultStatus.Cancelled
            await until(lambda: spans_of(exporter, pending.invocation_id))
            (span,) = spans_of(exporter, pending.invocation_id)
            assert span.attributes["workerkit.outcome"] == "cancelled"
            await conn.terminate()

    arun(scenario())


def test_otel_traces_exporter_configures_the_sdk_in_a_worker_process(tmp_path: Any) -> None:
    """OTEL_TRACES_EXPORTER=console with opentelemetry-sdk installed and no provider set by
    the app: the worker's spans are exported (printed on its stdout, which the host reads)."""
    app = EXAMPLES / "python" / "app"
    out = tmp_path / "worker.out"

    async def scenario() -> None:
        async with TestHost() as host:
            env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ex"}
            worker = await host.spawn(  # its stdout into `out` (the host's argv follow)
                ["sh", "-c", f'exec "$@" > {out}', "sh", sys.executable, "-u", str(WORKER)],
                cwd=app,
                env=env,
            )
            conn = worker.connection
            await conn.init(function_app_directory=str(app))
            await load_app(conn, app)
            request = HttpRequest("GET", "http://x/api/traced")
            pending = await conn.start_invocation(
                function_id("traced"),
                {"req": request},
                trace_context=pb.RpcTraceContext(trace_parent=PARENT),
            )
            assert (await pending.result(30)).result.status == SUCCESS
            await conn.terminate()
            assert await worker.wait(30) == 0

    arun(scenario())
    text = out.read_text()
    assert f'"trace_id": "0x{TRACE_ID}"' in text, text
    assert f'"parent_id": "0x{SPAN_ID}"' in text and '"faas.name": "traced"' in text
    assert '"service.name": "ex"' in text
