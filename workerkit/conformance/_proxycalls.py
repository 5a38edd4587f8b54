"""The scenarios for a worker that reports ``HttpUri`` (HTTP streaming through the host's
proxy): the host forwards each HTTP request to that address with ``x-ms-invocation-id``, and
still sends the ``InvocationRequest`` (an empty RpcHttp), so the worker must pair the two,
whichever comes first, answer both, and give up either one when the other never comes.

The host's side (Azure/azure-functions-host): ``GrpcWorkerChannel.SendInvocationRequest``
starts forwarding before it sends the invocation (src/WebJobs.Script.Grpc/Channel/
GrpcWorkerChannel.cs), ``DefaultHttpProxyService`` and ``RetryProxyHandler`` forward it
(src/WebJobs.Script.Grpc/Server/). Each is a `Step` of `._runner`, skipped for a worker that
does not report ``HttpUri``; the calls are `._invocations.proxied_call`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._generated import AzureFunctionsRpcMessages as pb
from ..emulator._httpuri import (
    HTTP_URI,
    HttpTarget,
    HttpUriError,
    forwarded_headers,
    parse_http_uri,
)
from ._httpclient import HttpAnswerError, connect, read_answer, request_bytes
from ._invocations import (
    answer_notes,
    answer_summary,
    case_inputs,
    case_request,
    judge,
    proxied_call,
    proxy_target,
    run_case,
)
from ._report import Outcome
from ._runner import (
    Failed,
    LaunchedWorker,
    NotRun,
    Runner,
    Verdict,
    checked_result,
    failure_text,
    one_line,
    status_name,
)

if TYPE_CHECKING:
    from ..emulator import FunctionSpec
    from ..emulator._rpchttp import IncomingRequest
    from ._cases import Case

_ORIGIN = "http://localhost:7071"


def _target(runner: Runner) -> HttpTarget:
    target = proxy_target(runner)
    if target is None:
        raise NotRun("skipped: the worker does not report HttpUri")
    return target


def http_functions(runner: Runner) -> list[FunctionSpec]:
    """The app's HTTP functions the host would invoke: loaded, not disabled."""
    return [
        spec
        for spec in runner.functions or ()
        if spec.trigger_type.lower() == "httptrigger"
        and not spec.disabled
        and not runner.loaded.get(spec.name)
    ]


def plain_request(spec: FunctionSpec) -> IncomingRequest:
    """A GET of the function's route (its name when the route has parameters)."""
    from ..emulator._rpchttp import IncomingRequest

    route = str(spec.trigger.get("route") or spec.name)
    path = spec.name if "{" in route else route.strip("/")
    return IncomingRequest("GET", f"{_ORIGIN}/api/{path}", headers=[("Host", "localhost:7071")])


def plain_inputs(
    capabilities: Mapping[str, str], spec: FunctionSpec, request: IncomingRequest
) -> tuple[dict[str, pb.TypedData], dict[str, pb.TypedData]]:
    """The inputs the host sends for `request`: the trigger's RpcHttp shaped for the
    worker's `capabilities` (empty, with HttpUri) and its binding data; no other inputs."""
    from ..emulator._rpchttp import build_rpc_http, http_trigger_metadata

    name = str(spec.trigger.get("name", "req"))
    http = build_rpc_http(request, capabilities)
    metadata = http_trigger_metadata(request, http, name, capabilities)
    inbound = [
        str(b.get("name"))
        for b in spec.bindings
        if b is not spec.trigger and str(b.get("direction", "in")).lower() != "out"
    ]
    return {name: pb.TypedData(http=http), **{n: pb.TypedData() for n in inbound}}, metadata


def _subject(runner: Runner) -> tuple[FunctionSpec, IncomingRequest, Case | None]:
    """What the ordering scenarios call: the first HTTP case (judged as such), else a GET of
    the first HTTP function (any answer will do)."""
    functions = {spec.name: spec for spec in http_functions(runner)}
    for case in runner.cases:
        spec = functions.get(case.function)
        if spec is not None and case.cancel_after is None:
            return spec, case_request(case, _bindings(spec)), case
    if not functions:
        raise NotRun("skipped: the app has no HTTP function to call")
    spec = next(iter(functions.values()))
    return spec, plain_request(spec), None


def _bindings(spec: FunctionSpec) -> dict[str, pb.BindingInfo]:
    metadata = spec.load_request().metadata
    return dict(metadata.bindings) if metadata is not None else {}


async def request_first(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """The forwarded request before the InvocationRequest: the host's order."""
    return await _ordered(runner, worker, request_first=True)


async def invocation_first(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """The InvocationRequest before the forwarded request (the host sends them on different
    connections, so a worker may see them in either order)."""
    return await _ordered(runner, worker, request_first=False)


async def _ordered(runner: Runner, worker: LaunchedWorker, *, request_first: bool) -> Verdict:
    target = _target(runner)
    spec, request, case = _subject(runner)
    if case is not None:
        inputs, metadata = case_inputs(runner, case, _bindings(spec))
    else:
        inputs, metadata = plain_inputs(runner.capabilities, spec, request)
    answer, reply = await proxied_call(
        runner,
        worker,
        target,
        spec.function_id,
        request,
        inputs,
        metadata,
        request_first=request_first,
    )
    if case is not None:
        outcome, detail = judge(case, reply, _bindings(spec), answer)
        return outcome, f"case {case.name!r}: {detail}"
    result = checked_result(reply.result, "InvocationResponse")
    got = status_name(result)
    detail = f"{spec.name}: {answer_summary(answer)}, InvocationResponse {got}"
    notes: list[str] = []
    problems = answer_notes(answer, got, notes)
    if problems:
        raise Failed(f"{detail}; " + "; ".join(problems))
    if notes:
        return Outcome.WARN, f"{detail}; " + "; ".join(notes)
    return Outcome.PASS, detail


async def after_reload(
    runner: Runner,
    worker: LaunchedWorker,
    capabilities: Mapping[str, str],
    functions: list[FunctionSpec],
) -> str:
    """A worker that reports ``HttpUri`` in its FunctionEnvironmentReloadResponse (HTTP
    streaming turned on by an app setting it saw only then): one forwarded call of its first
    HTTP function, as the host makes it after a reload; what happened, for the report ("" when
    it reports no HttpUri).

    Raises:
        Failed: an ``HttpUri`` not to connect to, no answer, or one cut off.
    """
    uri = capabilities.get(HTTP_URI, "").strip()
    http = [f for f in functions if f.trigger_type.lower() == "httptrigger" and not f.disabled]
    if not uri or not http:
        return ""
    try:
        target = parse_http_uri(uri)
    except HttpUriError as exc:
        raise Failed(f"after the reload: {exc}") from None
    request = plain_request(http[0])
    inputs, metadata = plain_inputs(capabilities, http[0], request)
    answer, reply = await proxied_call(
        runner, worker, target, http[0].function_id, request, inputs, metadata
    )
    got = status_name(checked_result(reply.result, "InvocationResponse"))
    detail = f"reports HttpUri {uri}: {http[0].name} answered {answer_summary(answer)}, {got}"
    problems = answer_notes(answer, got, [])
    if problems:
        raise Failed(f"after the reload, {detail}; " + "; ".join(problems))
    return detail


async def streamed(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """The first case expecting a streamed body: its pieces must arrive before the end of the
    response (``expect.http.streamed``), which only the proxy lets a function do."""
    _target(runner)
    case = next((c for c in runner.cases if c.expect.http and c.expect.http.streamed), None)
    if case is None:
        raise NotRun(
            'skipped: no case expects a streamed response (add "streamed": true to a case\'s'
            ' "http" expectation)'
        )
    outcome, detail = await run_case(runner, worker, case)
    return outcome, f"case {case.name!r}: {detail}"


async def unmatched(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """A forwarded request whose invocation never comes must be answered (an error status,
    504 ideally), and an invocation whose request never comes must fail, each within
    ``--http-wait``: the host may send either alone (a connection that failed, a client
    that went away), and a worker that waits for ever holds them for good."""
    target = _target(runner)
    functions = http_functions(runner)
    if not functions:
        raise NotRun("skipped: the app has no HTTP function to call")
    spec = functions[0]
    wait = runner.options.http_wait
    results = await asyncio.gather(
        _lone_request(target, spec, wait),
        _lone_invocation(runner, worker, spec, wait),
        return_exceptions=True,
    )
    verdicts: list[Verdict] = []
    for result in results:
        if isinstance(result, Failed):
            verdicts.append((Outcome.FAIL, str(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            verdicts.append(result)
    worst = next(
        (o for o in (Outcome.FAIL, Outcome.WARN) if any(v[0] is o for v in verdicts)),
        Outcome.PASS,
    )
    return worst, "; ".join(detail for _, detail in verdicts)


async def _lone_request(target: HttpTarget, spec: FunctionSpec, wait: float) -> Verdict:
    request = plain_request(spec)
    headers, _ = forwarded_headers(
        request.headers,
        invocation_id=f"conformance-never-invoked-{uuid.uuid4()}",
        target=target,
        client_address="127.0.0.1",
        scheme="http",
    )
    try:
        reader, writer = await connect(target)
    except OSError as exc:
        raise Failed(f"could not connect to HttpUri {target.uri} ({exc.strerror or exc})") from None
    started = time.monotonic()
    try:
        writer.write(request_bytes("GET", request.url[len(_ORIGIN) :], headers, None))
        await writer.drain()
        answer = await asyncio.wait_for(read_answer(reader), wait)
    except TimeoutError:
        raise Failed(
            f"a forwarded request whose invocation never came had no answer within {wait:g} s"
            " (--http-wait)"
        ) from None
    except (HttpAnswerError, ConnectionError) as exc:
        raise Failed(f"a forwarded request whose invocation never came: {exc}") from None
    finally:
        writer.close()
    took = f"after {time.monotonic() - started:.1f} s"
    if answer.status >= 500:
        return Outcome.PASS, f"request without invocation: {answer.status} {took}"
    return Outcome.WARN, (
        f"request without invocation: {answer.status} {took}, not an error status (the"
        " host's client would take it for the function's answer; 504 says what happened)"
    )


async def _lone_invocation(
    runner: Runner, worker: LaunchedWorker, spec: FunctionSpec, wait: float
) -> Verdict:
    inputs, metadata = plain_inputs(runner.capabilities, spec, plain_request(spec))
    started = time.monotonic()
    reply = await runner.invoke(
        worker,
        spec.function_id,
        inputs,
        trigger_metadata=metadata,
        timeout=wait,
        missing=f"an invocation whose forwarded request never came had no response within"
        f" {wait:g} s (--http-wait)",
    )
    result = checked_result(reply.result, "InvocationResponse")
    took = f"after {time.monotonic() - started:.1f} s"
    text = one_line(failure_text(result), 120)
    if result.status == pb.StatusResultStatus.Failure:
        return Outcome.PASS, f"invocation without request: {text} {took}"
    return Outcome.WARN, f"invocation without request: {text} {took} (Failure expected)"
