"""The scenarios that invoke: the cases of a cases file (inputs shaped as the host shapes
them, the response judged against the case's ``expect``), an invocation of a function never
loaded, and an InvocationCancel for an invocation never sent.

Each is a `Step` of `._runner`. The host's side: ``ToRpcInvocationRequest`` in
Azure/azure-functions-host ``src/WebJobs.Script.Grpc/Extensions/
ScriptInvocationContextExtensions.cs``; responses are read by ``GrpcWorkerChannel.cs``.

To a worker that reports ``HttpUri`` an HTTP case's request is forwarded (`proxied_call`), as
the host's proxy forwards it (``DefaultHttpProxyService``; the headers are `workerkit.emulator`'s
rules), and its ``expect.http`` is checked against the worker's own HTTP answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._generated import AzureFunctionsRpcMessages as pb
from ..emulator._httpuri import (
    HTTP_URI,
    HttpTarget,
    HttpUriError,
    forwarded_headers,
    parse_http_uri,
)
from ._cases import (
    MISSING,
    TRIGGER_INPUT,
    Case,
    CasesError,
    has_capability,
    http_request,
    input_data,
)
from ._expect import (
    answer_problem,
    describe,
    http_problem,
    kind_of,
    output_problems,
    short,
    value_problem,
)
from ._httpclient import HttpAnswer, HttpAnswerError, connect, read_answer, request_bytes
from ._report import Outcome
from ._runner import (
    Failed,
    LaunchedWorker,
    NotRun,
    Runner,
    Step,
    Verdict,
    checked_result,
    failure_text,
    one_line,
    status_name,
)

if TYPE_CHECKING:
    from ..emulator._rpchttp import IncomingRequest
    from ..testing import PendingInvocation


def case_step(case: Case) -> Step:
    """The scenario ``case:NAME``."""

    async def step(runner: Runner, worker: LaunchedWorker) -> Verdict:
        return await run_case(runner, worker, case)

    return step


async def run_case(runner: Runner, worker: LaunchedWorker, case: Case) -> Verdict:
    if runner.functions is None:
        raise NotRun("not run: no functions are known (see metadata)")
    spec = next((s for s in runner.functions if s.name == case.function), None)
    if spec is None:
        known = ", ".join(s.name for s in runner.functions) or "none"
        raise Failed(f"no function {case.function!r} in the app (functions: {known})")
    if spec.disabled:
        raise Failed(f"function {case.function!r} is disabled: the host never invokes it")
    if runner.loaded.get(spec.name):
        raise NotRun(f"not run: {spec.name} failed to load ({one_line(runner.loaded[spec.name])})")
    if case.cancel_after is not None and not has_capability(
        runner.capabilities, "HandlesInvocationCancelMessage"
    ):
        raise NotRun("skipped (not advertised: HandlesInvocationCancelMessage)")
    target = proxy_target(runner) if spec.trigger_type.lower() == "httptrigger" else None
    if target is None and case.expect.http is not None and case.expect.http.streamed:
        raise NotRun(
            "skipped: expects a streamed response (http.streamed), which only a worker that"
            " reports HttpUri sends"
        )
    function_metadata = spec.load_request().metadata
    bindings = dict(function_metadata.bindings) if function_metadata is not None else {}
    inputs, metadata = case_inputs(runner, case, bindings)
    if target is not None:
        request = case_request(case, bindings)
        answer, reply = await proxied_call(
            runner,
            worker,
            target,
            spec.function_id,
            request,
            inputs,
            metadata,
            timeout=case.timeout,
            cancel_after=case.cancel_after,
        )
        return judge(case, reply, bindings, answer)
    reply = await runner.invoke(
        worker,
        spec.function_id,
        inputs,
        trigger_metadata=metadata,
        timeout=case.timeout,
        cancel_after=case.cancel_after,
        missing=f"no InvocationResponse within {case.timeout or runner.options.timeout:g} s",
    )
    return judge(case, reply, bindings)


def case_inputs(
    runner: Runner, case: Case, bindings: Mapping[str, pb.BindingInfo]
) -> tuple[dict[str, pb.TypedData], dict[str, pb.TypedData]]:
    """Input data in the host's order (trigger first, then input bindings), and the
    trigger metadata the host would add, with the case's own entries on top."""
    inbound = {
        name: info
        for name, info in bindings.items()
        if info.direction != pb.BindingInfoDirection.out
    }
    triggers = [n for n, info in inbound.items() if info.type.lower().endswith("trigger")]
    given = dict(case.inputs)
    if TRIGGER_INPUT in given and triggers:  # (the host's validation asks for one trigger)
        if triggers[0] in given:
            raise Failed(
                f'the case gives the trigger twice: as "{TRIGGER_INPUT}" and as "{triggers[0]}"'
            )
        given[triggers[0]] = given.pop(TRIGGER_INPUT)
    unknown = [n for n in given if n not in inbound]
    if unknown:
        raise Failed(
            f"input {unknown[0]!r} is not an input binding of {case.function} "
            f"(inputs: {', '.join(inbound) or 'none'})"
        )
    missing = [n for n in triggers if n not in given]
    if missing:
        raise Failed(
            f'the case gives no value for the trigger "{missing[0]}" (or "{TRIGGER_INPUT}")'
        )
    inputs: dict[str, pb.TypedData] = {}
    metadata: dict[str, pb.TypedData] = {}
    for name in sorted(inbound, key=lambda n: n not in triggers):
        raw = given.get(name)
        trigger = name if name in triggers else ""
        try:
            inputs[name], added = input_data(
                raw, inbound[name], runner.capabilities, f"inputs.{name}", trigger=trigger
            )
        except CasesError as exc:
            raise Failed(str(exc)) from None
        metadata.update(added)
    for key, raw in case.trigger_metadata.items():
        metadata[key] = input_data(raw, None, runner.capabilities, f"trigger_metadata.{key}")[0]
    return inputs, metadata


def case_request(case: Case, bindings: Mapping[str, pb.BindingInfo]) -> IncomingRequest:
    """The HTTP request the case's trigger value describes (to forward it).

    Raises:
        Failed: the trigger's value is not a request description.
    """
    triggers = [n for n, info in bindings.items() if info.type.lower() == "httptrigger"]
    name = triggers[0] if triggers else TRIGGER_INPUT
    raw = case.inputs.get(name, case.inputs.get(TRIGGER_INPUT))
    try:
        request = http_request(raw, f"inputs.{name}")
    except CasesError as exc:
        raise Failed(str(exc)) from None
    if request is None:
        raise Failed(
            f"inputs.{name} must describe the HTTP request (a URL or an object): the worker"
            " reports HttpUri, so the request itself is forwarded to it"
        )
    return request


def proxy_target(runner: Runner) -> HttpTarget | None:
    """Where the worker's ``HttpUri`` says to forward HTTP requests; None without one.

    Raises:
        Failed: an ``HttpUri`` the kit does not connect to (only this machine's loopback).
    """
    uri = runner.capabilities.get(HTTP_URI, "").strip()
    if not uri:
        return None
    try:
        return parse_http_uri(uri)
    except HttpUriError as exc:
        raise Failed(str(exc)) from None


async def proxied_call(
    runner: Runner,
    worker: LaunchedWorker,
    target: HttpTarget,
    function_id: str,
    request: IncomingRequest,
    inputs: Mapping[str, pb.TypedData],
    metadata: Mapping[str, pb.TypedData],
    *,
    request_first: bool = True,
    timeout: float | None = None,
    cancel_after: float | None = None,
) -> tuple[HttpAnswer, pb.InvocationResponse]:
    """One call as the host makes it for a worker that reports ``HttpUri``: `request`
    forwarded with ``x-ms-invocation-id`` and the ``X-Forwarded-*`` headers, and the
    ``InvocationRequest`` (`inputs`: its RpcHttp empty), the request first (the host's
    order) unless `request_first` is false; then both answers. `cancel_after`: the client
    goes away then (InvocationCancel, the connection closed).

    Raises:
        Failed: no connection, no answer in time, or one that is not HTTP.
    """
    timeout = timeout or runner.options.timeout
    conn = worker.connection()
    invocation_id = str(uuid.uuid4())
    parts = urlsplit(request.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers, _ = forwarded_headers(
        request.headers,
        invocation_id=invocation_id,
        target=target,
        client_address="127.0.0.1",
        scheme=parts.scheme or "http",
    )
    wire = request_bytes(request.method, path, headers, request.body)

    async def forward() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await connect(target)
        except OSError as exc:
            raise Failed(
                f"could not connect to the worker's HttpUri {target.uri} in 10 attempts, as"
                f" the host tries ({exc.strerror or exc})"
            ) from None
        writer.write(wire)
        await writer.drain()
        return reader, writer

    async def start() -> PendingInvocation:
        return await conn.start_invocation(
            function_id, dict(inputs), trigger_metadata=dict(metadata), invocation_id=invocation_id
        )

    if request_first:
        reader, writer = await forward()
        pending = await start()
    else:
        pending = await start()
        reader, writer = await forward()
    reading = asyncio.ensure_future(read_answer(reader, head=request.method == "HEAD"))
    try:
        if cancel_after is not None:
            both: set[asyncio.Future[Any]] = {reading, pending.future}
            await asyncio.wait(both, timeout=cancel_after)
            if not (reading.done() and pending.future.done()):
                await conn.cancel(invocation_id)
                writer.close()
        reply = await runner.expect(
            worker,
            pending.result(timeout),
            kind="invocation_response",
            key=invocation_id,
            missing=f"no InvocationResponse within {timeout:g} s (the request was forwarded)",
        )
        try:
            answer = await asyncio.wait_for(asyncio.shield(reading), timeout)
        except TimeoutError:
            raise Failed(
                f"no HTTP answer to the forwarded request within {timeout:g} s (the"
                " InvocationResponse came; the host gives the answer up after 240 s of silence)"
            ) from None
        except HttpAnswerError as exc:
            raise Failed(f"the worker's HTTP answer is not valid HTTP/1.1: {exc}") from None
    finally:
        reading.cancel()
        writer.close()
    return answer, reply


def judge(
    case: Case,
    reply: pb.InvocationResponse,
    bindings: Mapping[str, pb.BindingInfo],
    answer: HttpAnswer | None = None,
) -> Verdict:
    """The verdict on `reply` to `case` (and on the worker's own HTTP `answer` when the
    request was forwarded): a failure lists every expectation it missed; what the host would
    silently drop or change makes a warning."""
    result = checked_result(reply.result, "InvocationResponse")
    expect = case.expect
    got = status_name(result)
    if got != expect.status:
        raise Failed(f"expected {expect.status}, got {one_line(failure_text(result))}")
    problems: list[str] = []
    notes: list[str] = []
    if answer is not None:
        if expect.http is not None:
            problem = answer_problem(answer, expect.http, "http")
            problems += [problem] if problem else []
        problems += answer_notes(answer, got, notes)
    if expect.error is not None:
        message = result.exception.message if result.exception else ""
        if expect.error not in message:
            problems.append(f"failure message {short(message)} lacks {expect.error!r}")
    if got == "Success":
        problems += output_problems(reply)
    outputs = {b.name: b.data for b in reply.output_data}
    if expect.return_value is not MISSING:
        problem = value_problem(reply.return_value, expect.return_value, "return_value")
        problems += [problem] if problem else []
    for name, expected in expect.outputs.items():
        problem = value_problem(outputs.get(name), expected, f"outputs.{name}")
        problems += [problem] if problem else []
    if expect.http is not None and answer is None:
        http_out = [
            n
            for n, info in bindings.items()
            if info.direction != pb.BindingInfoDirection.in_ and info.type.lower() == "http"
        ]
        name = http_out[0] if http_out else "$return"
        data = reply.return_value if name == "$return" else outputs.get(name)
        problem, silent = http_problem(data, expect.http, name)
        problems += [problem] if problem else []
        if data is None or data.http is None or data.http.body is not None:
            notes += silent  # (a missing body is already a problem, above)
    if problems:
        raise Failed("; ".join(problems))
    strays = sorted(
        name
        for name in outputs
        if name not in bindings or bindings[name].direction == pb.BindingInfoDirection.in_
    )
    if strays:
        notes.append(f"outputs {', '.join(strays)} match no output binding: the host drops them")
    if notes:
        return Outcome.WARN, f"{got}, but: " + "; ".join(notes)
    answers = [f"{name} {describe(data)}" for name, data in outputs.items()]
    if kind_of(reply.return_value) and answer is None:
        answers.insert(0, f"$return {describe(reply.return_value)}")
    if answer is not None:
        answers.insert(0, answer_summary(answer))
    return Outcome.PASS, f"{got}" + (f": {'; '.join(answers)}" if answers else "")


def answer_summary(answer: HttpAnswer) -> str:
    streamed = f", streamed in {answer.pieces} pieces" if answer.early else ""
    return f"HTTP {answer.status} ({len(answer.body)} bytes{streamed})"


def answer_notes(answer: HttpAnswer, got: str, notes: list[str]) -> list[str]:
    """What is wrong with a forwarded request's answer given the invocation ended `got`
    (returned); what the host would do about it is added to `notes`."""
    if not answer.complete:
        if got == "Success":
            return ["the HTTP answer was cut off, though the invocation succeeded"]
        return []
    if got != "Success" and answer.status < 400:
        notes.append(
            f"the HTTP answer was {answer.status} but the invocation ended {got}: the host then"
            " cuts the client's response (or answers 500 when no body was sent)"
        )
    return []


async def unknown_function(runner: Runner, worker: LaunchedWorker) -> Verdict:
    function_id = f"conformance-unknown-{uuid.uuid4()}"
    reply = await runner.invoke(
        worker,
        function_id,
        missing=f"no InvocationResponse within {runner.options.timeout:g} s for function id "
        f"{function_id!r}, which was never loaded",
    )
    result = checked_result(reply.result, "InvocationResponse")
    if result.status.name != "Failure":
        raise Failed(f"answered {status_name(result)} for a function never loaded")
    await asyncio.sleep(0.2)  # a worker that crashes after replying shows it now
    await runner.alive(worker)
    return Outcome.PASS, one_line(failure_text(result))


async def cancel_unknown(runner: Runner, worker: LaunchedWorker) -> Verdict:
    if not has_capability(runner.capabilities, "HandlesInvocationCancelMessage"):
        raise NotRun("skipped (not advertised: HandlesInvocationCancelMessage)")
    await worker.connection().cancel(f"conformance-never-sent-{uuid.uuid4()}")
    await runner.alive(worker)
    probe = "WorkerStatusRequest" if runner.status_ok else "an invocation"
    return Outcome.PASS, f"ignored; the worker still answers {probe}"
