"""Issue 17: `workerkit host` runs each HTTP call in a W3C trace (the request's
``traceparent`` continued, with ``tracestate``; else a new one), passes it to the worker in
the InvocationRequest, and shows the trace id on the console's "Executed" line. Real HTTP to
a `workerkit host` subprocess serving the Python example (its `traced` function answers the
trace id it runs in)."""

from __future__ import annotations

import json
import re

from conftest import EXAMPLES
from example_apps import emulator, http

from workerkit.emulator import _tracing

APP = EXAMPLES / "python" / "app"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_an_incoming_traceparent_is_continued_and_others_start_a_trace() -> None:
    transcript: list[str] = []
    with emulator(EXAMPLES / "python", APP, transcript=transcript) as url:
        import urllib.request

        headers = {
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
            "tracestate": "congo=t61rcWkgMzE",
        }
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/api/traced", headers=headers), timeout=30
        ) as reply:
            assert reply.status == 200
            continued = json.loads(reply.read())
        assert continued == {"trace_id": TRACE_ID, "in_thread": TRACE_ID}

        status, body = http("GET", f"{url}/api/traced")
        assert status == 200
        fresh = json.loads(body)["trace_id"]
        assert re.fullmatch("[0-9a-f]{32}", fresh) and fresh != TRACE_ID
        status, body = http("GET", f"{url}/api/traced")
        assert json.loads(body)["trace_id"] not in (fresh, TRACE_ID)  # one trace per request
    console = "".join(transcript)
    for trace_id in (TRACE_ID, fresh):
        assert re.search(
            rf"Executed 'Functions\.traced' \(Succeeded, Id=\S+, Duration=\d+ms,"
            rf" TraceId={trace_id}\)",
            console,
        ), console


def test_request_traces_from_headers() -> None:
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-00"
    trace = _tracing.from_headers([("TraceParent", parent), ("tracestate", "a=1, b=2"),
                                   ("tracestate", "c=3")])  # fmt: skip
    assert trace == _tracing.RequestTrace(TRACE_ID, "00", "a=1,b=2,c=3", "00f067aa0ba902b7")
    context = trace.invocation_context()
    version, trace_id, span_id, flags = context.trace_parent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
    assert span_id != "00f067aa0ba902b7" and context.trace_state == "a=1,b=2,c=3"
    # Two traceparent headers, or an invalid one: a new (sampled) trace.
    for headers in ([("traceparent", parent)] * 2, [("traceparent", "00-xyz")], []):
        fresh = _tracing.from_headers(headers)
        assert fresh.trace_id != TRACE_ID and fresh.flags == "01" and fresh.parent_id is None
    # A retry (or the dispatch of an HTTP call) stays in the request's trace.
    with (
        _tracing.request_trace([("traceparent", parent)]) as outer,
        _tracing.request_trace() as inner,
    ):
        assert inner is outer and _tracing.current_trace_id() == TRACE_ID
    assert _tracing.current_trace_id() == ""
