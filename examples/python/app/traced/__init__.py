"""HTTP, tracing: the OpenTelemetry trace id this function runs in, from the function itself
and from a thread it starts with its context; with ``workerkit[otel]`` installed it is the
host's (the trace of the HTTP request), else null. ``traced_async`` is the ``async def``
version (load it with ``"entryPoint": "traced_async"``)."""

import contextvars
import threading

from workerkit import HttpRequest, HttpResponse


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits; None without OpenTelemetry or a trace."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def main(req: HttpRequest) -> HttpResponse:
    seen: list[str | None] = []
    context = contextvars.copy_context()  # a thread started like this joins the trace too
    thread = threading.Thread(target=context.run, args=(lambda: seen.append(current_trace_id()),))
    thread.start()
    thread.join()
    return HttpResponse.from_json({"trace_id": current_trace_id(), "in_thread": seen[0]})


async def traced_async(req: HttpRequest) -> HttpResponse:
    return HttpResponse.from_json({"trace_id": current_trace_id()})
