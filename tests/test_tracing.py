"""Issue 17: user code runs inside the host's trace (OpenTelemetry, `workerkit[otel]`).

Worker processes under a real gRPC `TestHost` that sends a `trace_parent` (the Python
example's `traced` function answers the trace id it sees); the W3C parsing and the context
built from any string (hypothesis); `WorkerOpenTelemetryEnabled` at init and reload only with
the setting; a worker without opentelemetry importable. Spans with the SDK are in
test_tracing_spans.py, `workerkit host` in test_tracing_emulator.py.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Any

import pytest
from conftest import arun
from example_apps import EXAMPLES, SUCCESS, function_id, load_app, start
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace

import workerkit
from workerkit import HttpRequest, Invocation, TraceContext
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime import tracing
from workerkit.testing import TestHost, http_bindings

APP = EXAMPLES / "python" / "app"
WORKER = EXAMPLES / "python" / "worker.py"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
PROPERTY = settings(max_examples=300, deadline=None)


def traced_request() -> HttpRequest:
    return HttpRequest("GET", "http://localhost/api/traced")


async def call_traced(conn: Any, function: str, context: pb.RpcTraceContext) -> Any:
    """Invoke `function` (loaded from app/traced) with `context`; its JSON answer."""
    pending = await conn.start_invocation(
        function_id(function), {"req": traced_request()}, trace_context=context
    )
    result = conn.call_result(await pending.result(30))
    assert result.ok, result.error
    assert result.http is not None
    return json.loads(result.http.body)


# -- the example under a real gRPC host -------------------------------------------------------


def test_the_example_runs_in_the_hosts_trace_plain_def_thread_and_async_def() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python")
            loads = await load_app(conn, APP)
            assert loads["traced"].result.status == SUCCESS
            await conn.load_function(
                "traced_async",
                function_id=function_id("traced_async"),
                bindings=http_bindings(),
                script_file=str(APP / "traced" / "__init__.py"),
                entry_point="traced_async",
                directory=str(APP / "traced"),
            )
            context = pb.RpcTraceContext(trace_parent=PARENT)
            plain = await call_traced(conn, "traced", context)
            assert plain == {"trace_id": TRACE_ID, "in_thread": TRACE_ID}
            assert await call_traced(conn, "traced_async", context) == {"trace_id": TRACE_ID}
            # Each call its own trace: nothing leaks from one invocation to the next.
            other = "0af7651916cd43dd8448eb211c80319c"
            second = pb.RpcTraceContext(trace_parent=f"00-{other}-b7ad6b7169203331-00")
            assert (await call_traced(conn, "traced", second))["trace_id"] == other
            none = await call_traced(conn, "traced_async", pb.RpcTraceContext())
            assert none == {"trace_id": None}
            await conn.terminate()
            assert await worker.wait(30) == 0

    arun(scenario())


MALFORMED = [
    "",
    "garbage",
    f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper case hex
    f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
    f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff
    f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 with more fields
    f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
    "\x00\u00ff-☃ 00",
]


def test_a_malformed_trace_parent_means_no_parent_never_a_failure() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python")
            await load_app(conn, APP)
            for parent in MALFORMED:
                context = pb.RpcTraceContext(trace_parent=parent, trace_state="not a=state=")
                answer = await call_traced(conn, "traced", context)
                assert answer == {"trace_id": None, "in_thread": None}, parent
            # A later version may append fields: still the trace.
            future = pb.RpcTraceContext(trace_parent=f"01-{TRACE_ID}-{SPAN_ID}-01-later")
            assert (await call_traced(conn, "traced", future))["trace_id"] == TRACE_ID
            await conn.terminate()
            assert await worker.wait(30) == 0

    arun(scenario())


# -- trace state and baggage (an in-process worker that reports what it sees) ----------------


class Reporter(workerkit.Worker):
    """Answers what OpenTelemetry says inside the hook (async def) as `$return` JSON."""

    runtime_name = "tracing-reporter"

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        span = trace.get_current_span().get_span_context()
        return workerkit.InvocationResult(
            outputs={
                "$return": json.dumps(
                    {
                        "trace_id": format(span.trace_id, "032x"),
                        "state": span.trace_state.to_header(),
                        "sampled": span.trace_flags.sampled,
                        "baggage": dict(baggage.get_all()),
                        "seen": dict(invocation.trace_context.baggage),
                        "attributes": dict(invocation.trace_context.attributes),
                    }
                )
            }
        )


def test_trace_state_baggage_and_attributes_are_carried_over() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(Reporter())).connection
            await conn.init()
            loaded = await conn.load_function("report", bindings={"$return": _string_out()})
            context = pb.RpcTraceContext(
                trace_parent=PARENT,
                trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
                attributes={"OperationName": "report"},
                baggage={"tenant": "contoso", "user": "ada"},
            )
            pending = await conn.start_invocation(loaded.function_id, trace_context=context)
            reply = conn.call_result(await pending.result(30))
            assert reply.ok, reply.error
            assert json.loads(reply.return_value) == {
                "trace_id": TRACE_ID,
                "state": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
                "sampled": True,
                "baggage": {"tenant": "contoso", "user": "ada"},
                "seen": {"tenant": "contoso", "user": "ada"},
                "attributes": {"OperationName": "report"},
            }
            await conn.terminate()

    arun(scenario())


def _string_out() -> Any:
    from workerkit.testing import binding

    return binding("http", "out")


# -- parsing, for any input ------------------------------------------------------------------


HEX = "0123456789abcdef"


@PROPERTY
@given(st.text(max_size=80), st.text(max_size=80), st.dictionaries(st.text(), st.text()))
def test_any_trace_context_gives_a_context_or_none_and_never_raises(
    parent: str, state: str, bag: dict[str, str]
) -> None:
    loaded = tracing.load()
    assert loaded is not None
    ctx = loaded.parent(TraceContext(parent, state, baggage=bag))
    span = trace.get_current_span(ctx).get_span_context()
    parsed = tracing.parse_traceparent(parent)
    assert span.is_valid == (parsed is not None)
    if parsed is not None:
        assert (span.trace_id, span.span_id) == parsed[:2]


@PROPERTY
@given(
    st.text(HEX, min_size=32, max_size=32),
    st.text(HEX, min_size=16, max_size=16),
    st.integers(0, 255),
    st.sampled_from(["00", "01", "7f", "cc"]),
)
def test_valid_trace_parents_are_read_exactly(
    trace_id: str, span_id: str, flags: int, version: str
) -> None:
    header = f"{version}-{trace_id}-{span_id}-{flags:02x}"
    expected = None
    if set(trace_id) != {"0"} and set(span_id) != {"0"}:
        expected = (int(trace_id, 16), int(span_id, 16), flags)
    assert tracing.parse_traceparent(header) == expected


@PROPERTY
@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)
def test_the_wire_trace_context_is_read_whole(
    parent: str, state: str, attributes: dict[str, str], bag: dict[str, str]
) -> None:
    message = pb.RpcTraceContext(
        trace_parent=parent, trace_state=state, attributes=attributes, baggage=bag
    )
    read = tracing.read_trace_context(memoryview(bytes(message)))
    assert read == TraceContext(parent, state, attributes, bag)


# -- the opt-in capability ---------------------------------------------------------------------


def test_the_capability_only_with_the_setting_at_init_and_after_a_reload() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            clean = {k: v for k, v in os.environ.items() if k != tracing.OTEL_SETTING}
            plain = await host.spawn([sys.executable, str(WORKER)], cwd=APP, env=clean)
            init = await plain.connection.init(function_app_directory=str(APP))
            assert tracing.CAPABILITY not in init.capabilities
            off = await plain.connection.reload_environment(
                {**clean, tracing.OTEL_SETTING: "false"}, function_app_directory=str(APP)
            )
            assert tracing.CAPABILITY not in off.capabilities
            on = await plain.connection.reload_environment(
                {**clean, tracing.OTEL_SETTING: "true"}, function_app_directory=str(APP)
            )
            assert on.result.status == SUCCESS, on.result
            assert on.capabilities[tracing.CAPABILITY] == "true"
            await plain.connection.terminate()
            assert await plain.wait(30) == 0

            opted = await host.spawn(
                [sys.executable, str(WORKER)], cwd=APP, env={**clean, tracing.OTEL_SETTING: "1"}
            )
            init = await opted.connection.init(function_app_directory=str(APP))
            assert init.capabilities[tracing.CAPABILITY] == "true"
            await opted.connection.terminate()
            assert await opted.wait(30) == 0

    arun(scenario())


def test_the_option_wins_over_the_setting_and_bad_values_mean_no(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tracing.wants_opentelemetry(True, {}) is True
    assert tracing.wants_opentelemetry(False, {tracing.OTEL_SETTING: "true"}) is False
    assert tracing.wants_opentelemetry(None, {tracing.OTEL_SETTING: " TRUE "}) is True
    assert tracing.wants_opentelemetry(None, {tracing.OTEL_SETTING: "maybe"}) is False
    assert "neither true nor false" in caplog.text
    with pytest.raises(ValueError, match="opentelemetry"):
        workerkit.WorkerOptions(opentelemetry="yes")  # type: ignore[arg-type]


# -- without opentelemetry -------------------------------------------------------------------

#: Runs the example worker with every ``opentelemetry`` import failing, as if not installed.
HIDDEN = textwrap.dedent(
    """
    import runpy, sys

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    worker = sys.argv.pop(1)
    sys.argv[0] = worker
    sys.path.insert(0, worker.rpartition("/")[0])
    runpy.run_path(worker, run_name="__main__")
    """
)


def test_without_opentelemetry_the_worker_runs_and_still_reports_the_capability() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            env = {**os.environ, tracing.OTEL_SETTING: "true", "OTEL_TRACES_EXPORTER": "console"}
            worker = await host.spawn([sys.executable, "-c", HIDDEN, str(WORKER)], cwd=APP, env=env)
            conn = worker.connection
            init = await conn.init(function_app_directory=str(APP))
            assert init.result.status == SUCCESS, init.result
            assert init.capabilities[tracing.CAPABILITY] == "true"
            loads = await load_app(conn, APP)
            assert loads["traced"].result.status == SUCCESS
            answer = await call_traced(conn, "traced", pb.RpcTraceContext(trace_parent=PARENT))
            assert answer == {"trace_id": None, "in_thread": None}
            hello = await conn.invoke(
                function_id("hello"),
                {"req": HttpRequest("GET", "http://x/api/hello?name=Ada", query={"name": "Ada"})},
            )
            assert hello.result.status == SUCCESS
            await conn.terminate()
            assert await worker.wait(30) == 0

    arun(scenario())


def test_without_opentelemetry_load_returns_none_and_imports_nothing() -> None:
    code = HIDDEN.split("worker = sys.argv")[0] + textwrap.dedent(
        """
        from workerkit._runtime import tracing
        assert tracing.load() is None
        assert tracing.settings(None, True, {"OTEL_TRACES_EXPORTER": "console"}) == {
            "WorkerOpenTelemetryEnabled": "true"
        }
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        print("ok")
        """
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
