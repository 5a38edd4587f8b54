"""W3C trace context for `workerkit host`, as the host's request activity gives it.

Each call runs in a trace: an HTTP request with a valid ``traceparent`` header continues
that trace (its ``tracestate`` headers joined, its flags kept); any other request, timer,
admin call or warmup starts one (sampled, flags ``01``, so a worker's ParentBased sampler
records it). Retries stay in the trace of their first attempt. Every invocation sent to a
worker carries ``00-<trace id>-<new span id>-<flags>`` (the host's invocation activity,
child of the request's) and the trace state in its `RpcTraceContext`, and the console's
"Executed" line shows the trace id.

The trace of the call being dispatched lives in a `ContextVar` (`request_trace` sets it
around a call; the supervisor reads it when it builds the request).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.tracing import parse_traceparent

#: The W3C limit: a tracestate of more than 32 members is dropped (spec, "tracestate Limits").
_MAX_STATE_MEMBERS = 32


@dataclass(frozen=True)
class RequestTrace:
    """The trace a call runs in: ids as lower-case hex, flags as two hex digits."""

    trace_id: str
    flags: str = "01"
    state: str = ""
    #: The caller's span (a continued trace), else None.
    parent_id: str | None = None

    def invocation_context(self) -> pb.RpcTraceContext:
        """The `RpcTraceContext` of one invocation: a new span id in this trace."""
        parent = f"00-{self.trace_id}-{secrets.token_hex(8)}-{self.flags}"
        return pb.RpcTraceContext(trace_parent=parent, trace_state=self.state)


def new_trace() -> RequestTrace:
    """A trace of its own, sampled."""
    return RequestTrace(secrets.token_hex(16))


def from_headers(headers: Sequence[tuple[str, str]]) -> RequestTrace:
    """The trace of an HTTP request: its ``traceparent``'s when there is exactly one and it
    is valid (with the ``tracestate`` headers), else a new one."""
    parents = [v for k, v in headers if k.lower() == "traceparent"]
    parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
    if parsed is None:
        return new_trace()
    trace_id, span_id, flags = parsed
    members = [
        m.strip(" \t")
        for k, v in headers
        if k.lower() == "tracestate"
        for m in v.split(",")
        if m.strip(" \t")
    ]
    state = ",".join(members) if len(members) <= _MAX_STATE_MEMBERS else ""
    return RequestTrace(f"{trace_id:032x}", f"{flags:02x}", state, f"{span_id:016x}")


_current: ContextVar[RequestTrace | None] = ContextVar("workerkit_host_trace", default=None)


@contextlib.contextmanager
def request_trace(headers: Sequence[tuple[str, str]] | None = None) -> Iterator[RequestTrace]:
    """Run a call in a trace: the one of `headers` (an HTTP request), else the one already
    current (a retry, an HTTP call's dispatch), else a new one."""
    current = _current.get()
    if headers is not None:
        trace = from_headers(headers)
    elif current is not None:
        yield current
        return
    else:
        trace = new_trace()
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def invocation_context() -> pb.RpcTraceContext:
    """The `RpcTraceContext` for an invocation sent now (a new trace outside any call)."""
    trace = _current.get() or new_trace()
    return trace.invocation_context()


def current_trace_id() -> str:
    """The trace id of the call being dispatched ("" outside any)."""
    trace = _current.get()
    return trace.trace_id if trace is not None else ""
