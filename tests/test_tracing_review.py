"""Issue 17 review: the host's trace and the invocation's span on the paths the first tests
missed. In-process workers under a real gRPC `TestHost`, with this process's global SDK
TracerProvider exporting into memory (set once per process, as in test_tracing_spans.py).

- a streamed HTTP body is the function's code too: the span ends after it, and a body that
  fails makes the span a failure;
- an SDK part that raises (a span processor's ``on_end``) never changes an invocation's
  reply: success stays success, a failure keeps its own message, a cancel stays Cancelled;
- an invalid ``trace_state`` is dropped quietly: the parent stays, nothing is logged;
- ``on_cancel`` runs in the invocation's trace (it is a hook call for that invocation);
- a cancel answered Cancelled while the function runs on: the span ends when it returns,
  marked cancelled;
- pool threads and tasks keep nothing of a previous invocation's trace;
- the cheap check for a configured TracerProvider agrees with the API, in a fresh process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import arun, until
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import workerkit
from workerkit import HttpRequest, HttpResponse, Invocation, InvocationError, WorkerOptions
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime import tracing
from workerkit.testing import TestHost, binding

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
SUCCESS = pb.StatusResultStatus.Success
CANCELLED = pb.StatusResultStatus.Cancelled
tracer = trace.get_tracer("tests.tracing_review")
#: A W3C tracestate member (hypothesis draws valid ones from it, with blanks around).
MEMBER = r"[ \t]?[a-z][a-z0-9_*/-]{0,8}(@[a-z][a-z0-9]{0,4})?=[!-+\--<>-~]{1,8}[ \t]?"


class Broken(SpanProcessor):
    """A span processor that raises when a span named ``broken*`` ends (an exporter or
    processor with a bug); other spans pass."""

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("broken"):
            raise RuntimeError("the span processor is broken")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(Broken())
    yield memory
    memory.shutdown()


def span_of(exporter: InMemorySpanExporter, invocation_id: str) -> Any:
    spans = exporter.get_finished_spans()
    found = [s for s in spans if s.attributes.get("faas.invocation_id") == invocation_id]
    return found[0] if found else None


def children(exporter: InMemorySpanExporter, span: Any) -> list[Any]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == span.context.span_id
    ]


def trace_id_now() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


HTTP = {"req": binding("httpTrigger"), "$return": binding("http", "out")}


class Review(workerkit.Worker):
    """``stream`` returns a body generated chunk by chunk (each chunk in a span of its own);
    ``stream_fail`` a body that raises; ``broken_*`` exercise the broken processor;
    ``stop`` waits to be cancelled; ``stubborn`` swallows its cancel and returns when
    `release` is set; ``report`` answers the trace id it runs in."""

    runtime_name = "tracing-review"
    running: set[str] = set()
    cancels: dict[str, str | None] = {}
    release = threading.Event()

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        if name in ("stream", "stream_fail"):
            return HttpResponse(body=self.chunks(name == "stream_fail"))
        if name == "broken_fail":
            raise InvocationError("no luck")
        if name in ("stop", "broken_stop"):
            self.running.add(invocation.invocation_id)
            await asyncio.sleep(60)
        if name == "stubborn":
            self.running.add(invocation.invocation_id)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # swallowed: answered Cancelled after the grace, runs on
            await until(self.release.is_set)
        if name == "report":
            return HttpResponse(body=json.dumps({"trace_id": trace_id_now()}))
        return HttpResponse(body="ok")

    async def chunks(self, fail: bool) -> AsyncIterator[bytes]:
        for number in range(3):
            with tracer.start_as_current_span("chunk"):
                await asyncio.sleep(0)
                yield f"{number}\n".encode()
        if fail:
            raise ValueError("the body broke")

    async def on_cancel(self, invocation: Invocation) -> None:
        self.cancels[invocation.invocation_id] = trace_id_now()


class SyncCancel(Review):
    def on_cancel(self, invocation: Invocation) -> None:  # type: ignore[override]
        self.cancels[invocation.invocation_id] = trace_id_now()


async def started(worker: workerkit.Worker, *names: str) -> tuple[Any, dict[str, str]]:
    host = TestHost()
    await host.__aenter__()
    conn = (await host.start_worker(worker)).connection
    await conn.init()
    ids = {}
    for name in names:
        ids[name] = (await conn.load_function(name, bindings=HTTP)).function_id
    return host, conn, ids  # type: ignore[return-value]


async def call(conn: Any, function_id: str, parent: str = PARENT, state: str = "") -> Any:
    pending = await conn.start_invocation(
        function_id,
        {"req": HttpRequest("GET", "http://x/api/f")},
        trace_context=pb.RpcTraceContext(trace_parent=parent, trace_state=state),
    )
    return pending


# -- the span's extent ------------------------------------------------------------------------


def test_a_streamed_body_is_inside_the_invocations_span(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        host, conn, ids = await started(Review(), "stream", "stream_fail")
        try:
            reply = await (await call(conn, ids["stream"])).result(30)
            assert reply.result.status == SUCCESS
            own = span_of(exporter, reply.invocation_id)
            chunks = children(exporter, own)
            assert [c.name for c in chunks] == ["chunk"] * 3
            assert own.end_time >= max(c.end_time for c in chunks)
            assert own.attributes["workerkit.outcome"] == "success"

            failed = await (await call(conn, ids["stream_fail"])).result(30)
            assert failed.result.status != SUCCESS
            own = span_of(exporter, failed.invocation_id)
            assert own.attributes["workerkit.outcome"] == "failure"
            assert own.status.status_code == StatusCode.ERROR
            assert "the body broke" in (own.status.description or "")
            await conn.terminate()
        finally:
            await host.__aexit__(None, None, None)

    arun(scenario())


def test_a_broken_span_processor_never_changes_a_reply(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        host, conn, ids = await started(Review(), "broken_ok", "broken_fail", "broken_stop")
        try:
            ok = await (await call(conn, ids["broken_ok"])).result(30)
            assert ok.result.status == SUCCESS, ok.result
            failed = await (await call(conn, ids["broken_fail"])).result(30)
            assert failed.result.status == pb.StatusResultStatus.Failure
            assert failed.result.exception.message == "no luck"
            pending = await call(conn, ids["broken_stop"])
            await until(lambda: pending.invocation_id in Review.running)
            await conn.cancel(pending.invocation_id)
            stopped = await pending.result(30)
            assert stopped.result.status == CANCELLED, stopped.result
            await conn.terminate()
        finally:
            await host.__aexit__(None, None, None)

    arun(scenario())


def test_an_overdue_cancel_ends_the_span_when_the_function_returns_marked_cancelled(
    exporter: InMemorySpanExporter,
) -> None:
    async def scenario() -> None:
        host, conn, ids = await started(Review(), "stubborn")
        Review.release.clear()
        try:
            pending = await call(conn, ids["stubborn"])
            await until(lambda: pending.invocation_id in Review.running)
            await conn.cancel(pending.invocation_id)
            assert (await pending.result(30)).result.status == CANCELLED
            assert span_of(exporter, pending.invocation_id) is None  # it still runs
            Review.release.set()
            await until(lambda: span_of(exporter, pending.invocation_id) is not None)
            span = span_of(exporter, pending.invocation_id)
            assert span.attributes["workerkit.outcome"] == "cancelled"
            await conn.terminate()
        finally:
            Review.release.set()
            await host.__aexit__(None, None, None)

    arun(scenario())


# -- the context ------------------------------------------------------------------------------


def test_an_invalid_trace_state_keeps_the_parent_and_logs_nothing(
    exporter: InMemorySpanExporter,
) -> None:
    async def scenario() -> None:
        host, conn, ids = await started(Review(), "report")
        try:
            for state in ("not a=state=", "Upper=1", "a=1,a=2", ",".join(["k=v"] * 2)):
                pending = await call(conn, ids["report"], state=state)
                reply = await pending.result(30)
                assert reply.result.status == SUCCESS
                answer = json.loads(conn.call_result(reply).http.body)
                assert answer == {"trace_id": TRACE_ID}, state
                span = span_of(exporter, reply.invocation_id)
                assert format(span.parent.span_id, "016x") == SPAN_ID
                assert span.context.trace_state.to_header() == ""
                assert conn.logs_for(reply.invocation_id) == [], state
            good = await (await call(conn, ids["report"], state="rojo=1, congo=t61")).result(30)
            span = span_of(exporter, good.invocation_id)
            assert span.context.trace_state.to_header() == "rojo=1,congo=t61"
            await conn.terminate()
        finally:
            await host.__aexit__(None, None, None)

    arun(scenario())


@pytest.mark.parametrize("worker_class", [Review, SyncCancel], ids=["async", "plain"])
def test_on_cancel_runs_in_the_invocations_trace(
    exporter: InMemorySpanExporter, worker_class: type[Review]
) -> None:
    async def scenario() -> None:
        host, conn, ids = await started(worker_class(), "stop")
        try:
            pending = await call(conn, ids["stop"])
            await until(lambda: pending.invocation_id in Review.running)
            await conn.cancel(pending.invocation_id)
            assert (await pending.result(30)).result.status == CANCELLED
            await until(lambda: pending.invocation_id in Review.cancels)
            assert Review.cancels[pending.invocation_id] == TRACE_ID
            await conn.terminate()
        finally:
            await host.__aexit__(None, None, None)

    arun(scenario())


class Threads(workerkit.Worker):
    """One pool thread: plain def ``report`` answers the trace id it runs in."""

    runtime_name = "tracing-threads"

    def __init__(self) -> None:
        super().__init__(options=WorkerOptions(threads=1))

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    def on_invocation(self, invocation: Invocation) -> Any:
        return HttpResponse(body=json.dumps({"trace_id": trace_id_now()}))


def test_a_reused_pool_thread_keeps_no_trace_of_a_previous_invocation() -> None:
    async def scenario() -> None:
        host, conn, ids = await started(Threads(), "report")
        try:
            seen = []
            for parent in (PARENT, "", "00-garbage", PARENT):
                reply = await (await call(conn, ids["report"], parent=parent)).result(30)
                seen.append(json.loads(conn.call_result(reply).http.body)["trace_id"])
            # No parent: no trace, or (with an SDK configured in this process) a new one.
            assert seen[0] == seen[3] == TRACE_ID
            assert TRACE_ID not in seen[1:3], seen
            await conn.terminate()
        finally:
            await host.__aexit__(None, None, None)

    arun(scenario())


# -- the check for a configured provider -------------------------------------------------------


def test_the_provider_check_follows_the_api_in_a_fresh_process() -> None:
    """Before a provider is set there is no tracer (and the API agrees); a provider set later
    (at a function's import, say) is found by the next invocation, and stays."""
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from workerkit._runtime import tracing

        t = tracing.load()
        assert t.tracer() is None and t.tracer() is None
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        found = t.tracer()
        assert found is not None and found is t.tracer()
        assert tracing.load().tracer() is not None
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_a_provider_named_by_otel_python_tracer_provider_is_found() -> None:
    script = textwrap.dedent(
        """
        from workerkit._runtime import tracing

        assert tracing.load().tracer() is not None
        print("ok")
        """
    )
    env = {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=env, check=False,
    )  # fmt: skip
    assert done.stdout.strip() == "ok", done.stderr


def test_parsing_is_deferred_but_gives_the_same_span_context() -> None:
    loaded = tracing.load()
    assert loaded is not None
    for parent, state in [(PARENT, "rojo=1"), (f"00-{TRACE_ID}-{SPAN_ID}-00", ""), ("x", "")]:
        ctx = loaded.parent(workerkit.TraceContext(parent, state))
        span = trace.get_current_span(ctx)
        assert not span.is_recording()
        context = span.get_span_context()
        parsed = tracing.parse_traceparent(parent)
        if parsed is None:
            assert not context.is_valid
            continue
        assert (context.trace_id, context.span_id, int(context.trace_flags)) == parsed
        assert context.is_remote and context.trace_state.to_header() == state


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120) | st.lists(st.from_regex(MEMBER, fullmatch=True)).map(",".join))
def test_a_trace_state_is_kept_whole_or_dropped_whole(header: str) -> None:
    """Whatever the host sends: never an error; what is kept, OpenTelemetry keeps as is."""
    pairs = tracing.parse_tracestate(header)
    if pairs is not None:
        assert list(trace.TraceState(pairs).items()) == pairs
        assert len(pairs) <= 32 and len({key for key, _ in pairs}) == len(pairs)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["traceparent", "TraceParent", "tracestate"]),
                          st.text(max_size=70) | st.just(PARENT)), max_size=3))  # fmt: skip
def test_workerkit_host_gives_every_request_a_valid_trace(headers: list[tuple[str, str]]) -> None:
    from workerkit.emulator import _tracing

    request = _tracing.from_headers(headers)
    sent = request.invocation_context().trace_parent
    parsed = tracing.parse_traceparent(sent)
    assert parsed is not None and sent.startswith("00-")
    assert format(parsed[0], "032x") == request.trace_id
    parents = [v for k, v in headers if k.lower() == "traceparent"]
    continued = len(parents) == 1 and tracing.parse_traceparent(parents[0]) is not None
    assert (request.parent_id is not None) == continued
    if not continued:
        assert request.flags == "01"  # a new trace is sampled
