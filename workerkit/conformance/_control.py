"""The scenarios about the stream and the control messages: StartStream, init, capabilities,
environment reload, status, the message rules, WorkerTerminate and the end of the stream.

Each is a `Step` of `._runner`. The host behaviour they check is in
Azure/azure-functions-host, mostly ``src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs``
(replies, capabilities, logs) and ``src/WebJobs.Script/Workers/ProcessManagement/
WorkerProcess.cs`` (exit statuses)."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final
from urllib.parse import urlsplit

import betterproto2

from .._generated import AzureFunctionsRpcMessages as pb
from ._cases import has_capability
from ._report import Outcome
from ._runner import (
    Failed,
    LaunchedWorker,
    NotRun,
    Runner,
    Verdict,
    checked_result,
    failure_text,
)

#: The capabilities without which the host never sends a control message: WorkerStatusRequest,
#: WorkerTerminate (it kills the process instead) and InvocationCancel.
CONTROL_CAPABILITIES: Final = (
    "WorkerStatus",
    "HandlesWorkerTerminateMessage",
    "HandlesInvocationCancelMessage",
)


async def start_stream(runner: Runner, worker: LaunchedWorker) -> Verdict:
    runner.current = worker
    try:
        await runner.connect(worker)
    except Failed:
        runner.blocked = "the worker never opened its stream (see start-stream)"
        raise
    conn = worker.connection()
    if conn.start_request_id != worker.args.request_id:
        return Outcome.WARN, (
            f"worker id echoed, but StartStream.request_id is {conn.start_request_id!r}, "
            f"not the --requestId {worker.args.request_id!r} (the host ignores it; "
            "the official workers echo it)"
        )
    return Outcome.PASS, "worker id and request id from the command line"


async def init(runner: Runner, worker: LaunchedWorker) -> Verdict:
    timeout = runner.options.init_timeout
    try:
        reply = await runner.init(
            worker,
            timeout,
            missing=f"no WorkerInitResponse within {timeout:g} s "
            "(initializationTimeout: the host would restart the worker)",
        )
    except (Failed, ConnectionError) as exc:
        runner.blocked = "the worker did not answer WorkerInitRequest (see init)"
        if isinstance(exc, ConnectionError):
            raise Failed(f"the worker ended the stream{await runner.exit_note(worker)}") from None
        raise
    runner.capabilities = dict(reply.capabilities)
    result = checked_result(reply.result, "WorkerInitResponse")
    if result.status.name != "Success":
        raise Failed(f"answered {failure_text(result)} (the host restarts the worker)")
    detail = "Success"
    metadata = reply.worker_metadata
    if metadata is not None and metadata.runtime_name:
        detail += f"; runtime {metadata.runtime_name} {metadata.runtime_version}".rstrip()
    return Outcome.PASS, detail


async def capabilities(runner: Runner, worker: LaunchedWorker) -> Verdict:
    caps = runner.capabilities
    flags = [
        f"{name} {'yes' if has_capability(caps, name) else 'NO'}" for name in CONTROL_CAPABILITIES
    ]
    others = sorted(k for k in caps if k not in CONTROL_CAPABILITIES and has_capability(caps, k))
    detail = ", ".join(flags) + (f"; also {', '.join(others)}" if others else "")
    empty = sorted(k for k, v in caps.items() if not v.strip())
    uri = caps.get("HttpUri", "").strip()
    if uri:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Failed(
                f"HttpUri {uri!r} is not an absolute URI: the host counts that as a worker error"
            )
    warnings = []
    if empty:
        warnings.append(f"empty values count as not declared: {', '.join(empty)}")
    if has_capability(caps, "SupportsLoadResponseCollection"):
        # The host waits for one collection reply per function, arming a timeout on the
        # last wait only (GrpcWorkerChannel.SendFunctionLoadRequests): with two or more
        # functions the rest time out as a worker error.
        warnings.append(
            "SupportsLoadResponseCollection: the host mishandles it for 2+ functions "
            "(it waits for one reply per function)"
        )
    if warnings:
        return Outcome.WARN, "; ".join(warnings) + f" [{detail}]"
    return Outcome.PASS, detail


async def environment_reload(runner: Runner, worker: LaunchedWorker) -> Verdict:
    environment = {k: v for k, v in runner.env.items() if v}
    timeout = runner.options.timeout
    reply = await runner.expect(
        worker,
        worker.connection().reload_environment(environment, str(runner.cwd), timeout=timeout),
        kind="function_environment_reload_response",
        missing=f"no FunctionEnvironmentReloadResponse within {timeout:g} s",
    )
    result = checked_result(reply.result, "FunctionEnvironmentReloadResponse")
    if reply.capabilities:
        replace = pb.FunctionEnvironmentReloadResponseCapabilitiesUpdateStrategy.replace
        if reply.capabilities_update_strategy == replace:
            runner.capabilities.clear()
        runner.capabilities.update(reply.capabilities)
    if result.status.name != "Success":
        raise Failed(f"answered {failure_text(result)}")
    return Outcome.PASS, f"Success ({len(environment)} variables, app directory {runner.cwd})"


async def status(runner: Runner, worker: LaunchedWorker) -> Verdict:
    if not has_capability(runner.capabilities, "WorkerStatus"):
        raise NotRun("skipped (not advertised: WorkerStatus)")
    conn = worker.connection()
    timeout = runner.options.timeout

    def missing(strays: list[Any]) -> str:
        detail = f"no WorkerStatusResponse with the request's request_id within {timeout:g} s"
        if strays:
            got = [m.request_id for m in conn.unmatched if m.worker_status_response]
            detail += f" (one came with request_id {got[-1]!r})" if got else ""
        # the only request the host matches by request_id rather than by kind or id
        return detail + ": the host matches it by request_id"

    await runner.expect(
        worker,
        conn.status(timeout=timeout),
        kind="worker_status_response",
        key="*",
        missing=missing,
    )
    runner.status_ok = True
    return Outcome.PASS, "answered with the request_id echoed"


async def message_rules(runner: Runner, worker: LaunchedWorker) -> Verdict:
    failures: list[str] = []
    warnings: list[str] = []
    checked = 0
    for each in runner.workers:
        if each.conn is None:
            continue
        messages = each.conn.messages
        checked += len(messages)
        for message in each.conn.unmatched:
            if id(message) in each.explained:
                continue
            kind, body = betterproto2.which_one_of(message, "content")
            key = getattr(body, "invocation_id", "") or getattr(body, "function_id", "")
            if (kind, key) in each.timed_out or (kind, "*") in each.timed_out:
                continue
            failures.append(f"unsolicited or second {kind}" + (f" for {key}" if key else ""))
        answered: dict[str, int] = {}
        for index, message in enumerate(messages):
            if message.invocation_response is not None:
                answered.setdefault(message.invocation_response.invocation_id, index)
        late = orphan = 0
        for index, message in enumerate(messages):
            entry = message.rpc_log
            if entry is None or entry.log_category != pb.RpcLogRpcLogCategory.User:
                continue
            if not entry.invocation_id:
                orphan += 1
            elif index > answered.get(entry.invocation_id, len(messages)):
                late += 1
        # The host logs a User log only while its invocation runs on that channel; it
        # drops the others without a word.
        if orphan:
            warnings.append(f"{orphan} User log(s) without invocation_id (the host drops them)")
        if late:
            warnings.append(
                f"{late} User log(s) after their invocation's response (the host drops them)"
            )
    if failures:
        raise Failed("; ".join(sorted(set(failures))) + " (the host expects one reply per request)")
    if warnings:
        return Outcome.WARN, "; ".join(warnings)
    return Outcome.PASS, f"{checked} messages from {len(runner.workers)} process(es) checked"


async def terminate(runner: Runner, worker: LaunchedWorker) -> Verdict:
    if not has_capability(runner.capabilities, "HandlesWorkerTerminateMessage"):
        await runner.kill(worker)
        raise NotRun(
            "skipped (not advertised: HandlesWorkerTerminateMessage; the host kills the "
            "process instead)"
        )
    grace = runner.options.grace
    started = time.monotonic()
    await worker.connection().terminate(grace)
    try:
        code = await worker.process.wait(grace)
    except TimeoutError:
        await runner.kill(worker)
        raise Failed(
            f"still running {grace:g} s after WorkerTerminate(grace_period={grace:g}s): the "
            f"host kills it then{runner.stderr_note(worker)}"
        ) from None
    if code != 0:
        raise Failed(f"exited with status {code}, not 0{runner.stderr_note(worker)}")
    return Outcome.PASS, f"exited 0 after {time.monotonic() - started:.2f} s of {grace:g}"


async def stream_end(runner: Runner, _: LaunchedWorker) -> Verdict:
    """A process of its own: when the host ends the stream the worker must exit non-zero.
    The host notices no broken stream by itself; only an exit makes it restart a worker,
    and an exit with status 0 it takes as deliberate (no restart)."""
    worker = await runner.launch()
    try:
        try:
            await runner.connect(worker)
        except Failed as exc:
            raise NotRun(f"not run: no stream ({exc})") from None
        with contextlib.suppress(TimeoutError, ConnectionError):
            await runner.init(worker, runner.options.init_timeout)
        grace = runner.options.grace
        started = time.monotonic()
        worker.connection().close()
        try:
            code = await worker.process.wait(grace)
        except TimeoutError:
            raise Failed(
                f"still running {grace:g} s after the host ended the stream: the host "
                "would keep a dead channel instead of restarting it"
            ) from None
        if code == 0:
            raise Failed(
                "exited with status 0 when the host ended the stream: the host takes 0 as "
                "a deliberate stop and does not restart the worker"
            )
        return Outcome.PASS, f"exited {code} after {time.monotonic() - started:.2f} s"
    finally:
        await runner.kill(worker)
