"""The scenarios about the stream and the control messages: StartStream, init, capabilities,
environment reload, status, the message rules, WorkerTerminate and the end of the stream.

Each is a `Step` of `._runner`. The host behaviour they check is in
Azure/azure-functions-host, mostly ``src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs``
(replies, capabilities, logs) and ``src/WebJobs.Script/Workers/ProcessManagement/
WorkerProcess.cs`` (exit statuses)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import betterproto2

from .._generated import AzureFunctionsRpcMessages as pb
from ._cases import has_capability
from ._proxycalls import after_reload
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
)

if TYPE_CHECKING:
    from ..emulator import FunctionSpec

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
    """Specialization, on a process of its own started as the host starts one in placeholder
    mode (``WEBSITE_PLACEHOLDER_MODE=1``): for a placeholder app in a directory of its own
    (working directory, init and environment: ``ScriptApplicationHostOptionsSetup.Configure``
    in Azure/azure-functions-host isolates it under the temp directory); then
    FunctionEnvironmentReloadRequest with the app's environment and directory, and the app's
    functions must load (with worker indexing: reported first), as the host asks next
    (``WebHostRpcWorkerChannelManager``, ``GrpcWorkerChannel``).

    Its own process because a reload changes the worker for good: the official Python worker
    then has the app on its import path (hiding a missing ``AzureWebJobsScriptRoot`` from
    every later scenario), the Node.js worker resets its app (and finds no functions the
    second time it loads the same entry point)."""
    placeholder = runner.placeholder[0] if runner.placeholder else runner.cwd
    try:
        await runner.connect(worker)
        init_reply = await runner.init(worker, runner.options.init_timeout, app_dir=placeholder)
        result = checked_result(init_reply.result, "WorkerInitResponse")
        if result.status.name != "Success":
            raise Failed(f"answered {failure_text(result)}")
    except (Failed, TimeoutError, ConnectionError) as exc:
        why = str(exc) or f"no WorkerInitResponse within {runner.options.init_timeout:g} s"
        raise NotRun(f"not run: init for a placeholder app failed ({one_line(why, 120)})") from None
    capabilities = dict(init_reply.capabilities)
    environment = {k: v for k, v in runner.env.items() if v}
    timeout = runner.options.timeout
    reply = await runner.expect(
        worker,
        worker.connection().reload_environment(environment, str(runner.cwd), timeout=timeout),
        kind="function_environment_reload_response",
        missing=f"no FunctionEnvironmentReloadResponse within {timeout:g} s",
    )
    result = checked_result(reply.result, "FunctionEnvironmentReloadResponse")
    if result.status.name != "Success":
        raise Failed(f"answered {failure_text(result)} (the host then starts a normal worker)")
    detail = f"Success ({len(environment)} variables, app directory {runner.cwd})"
    if reply.capabilities:
        replace = pb.FunctionEnvironmentReloadResponseCapabilitiesUpdateStrategy.replace
        if reply.capabilities_update_strategy == replace:
            capabilities.clear()
        capabilities.update(reply.capabilities)
    if capabilities != runner.capabilities and runner.capabilities:
        changed = sorted(set(capabilities.items()) ^ set(runner.capabilities.items()))
        detail += f"; capabilities then differ from init's: {', '.join(k for k, _ in changed)}"
    functions = await _load_after_reload(runner, worker)
    count = len(functions)
    proxied = await after_reload(runner, worker, capabilities, functions)
    if proxied:
        detail += f"; then {proxied}"
    if runner.worker_indexing:
        detail += f"; then reported and loaded {count} function(s)"
        if not count:
            return Outcome.WARN, detail + " (the host asks for them after a reload)"
    elif count:
        detail += f"; then loaded the app's {count} function(s)"
    return Outcome.PASS, detail


async def _load_after_reload(runner: Runner, worker: LaunchedWorker) -> list[FunctionSpec]:
    """What the host does after a reload: metadata (worker indexing), then the loads. Raise
    `Failed` when a function does not load; return the functions loaded."""
    from ..emulator import discover_functions, functions_from_metadata

    functions = list(runner.functions or ())
    if runner.worker_indexing:
        timeout = runner.options.timeout
        reply = await runner.expect(
            worker,
            worker.connection().functions_metadata(str(runner.cwd), timeout=timeout),
            kind="function_metadata_response",
            missing=f"no FunctionMetadataResponse after the reload within {timeout:g} s",
        )
        if reply.use_default_metadata_indexing:
            functions = discover_functions(runner.cwd)[0]
        else:
            functions = functions_from_metadata(reply.function_metadata_results, runner.cwd)[0]
    failures = []
    for spec in functions:
        load = await runner.load(
            worker, spec.load_request(), missing=f"no FunctionLoadResponse for {spec.name}"
        )
        if load.result is None or load.result.status.name != "Success":
            answer = "no result" if load.result is None else failure_text(load.result)
            failures.append(f"{spec.name}: {one_line(answer, 120)}")
    if failures:
        raise Failed(
            f"after the reload (which moved the worker from the placeholder app to "
            f"{runner.cwd}), " + "; ".join(failures)
        )
    return functions


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


async def stream_end(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """A process of its own: when the host ends the stream the worker must exit, with a
    non-zero status. The host notices no broken stream by itself, only the process's exit
    (``WorkerProcess.OnProcessExited``): non-zero (but 200) is an error and the worker is
    replaced; 0 is neither an error nor a restart, the process is merely closed."""
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
            f"still running {grace:g} s after the host ended the stream: an orphan process "
            "(no host will send it anything again, and one that stopped or restarted never "
            "ends it: the official Python worker idles like this for ever); exit non-zero "
            "when the stream ends"
        ) from None
    elapsed = time.monotonic() - started
    if code == 0:
        return Outcome.WARN, (
            f"exited with status 0 after {elapsed:.2f} s: to the host, exit status 0 is "
            "neither an error nor a restart request: it closes the process and starts no "
            "replacement; exit non-zero (e.g. 1) so that it starts a new worker"
        )
    return Outcome.PASS, f"exited {code} after {elapsed:.2f} s"
