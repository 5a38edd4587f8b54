"""The scenarios about functions: which ones there are (the app's ``function.json`` files,
or the worker's own answer to FunctionsMetadataRequest) and whether each loads, also in a
restarted process.

Each is a `Step` of `._runner`. The host's side: ``GetFunctionLoadRequest`` and
``ProcessFunctionMetadataResponses`` in Azure/azure-functions-host
``src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs``, and ``ValidateMetadata`` in
``src/WebJobs.Script/Host/WorkerFunctionMetadataProvider.cs``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ..testing import HostConnection, http_bindings
from ._report import Outcome
from ._runner import (
    Failed,
    LaunchedWorker,
    Runner,
    Step,
    Verdict,
    checked_result,
    failure_text,
    no_result,
    one_line,
)

if TYPE_CHECKING:
    from ..emulator import FunctionSpec


async def load_probe(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """A load the worker cannot honour must still be answered, with the function's id: the
    host looks the reply up by that id, and an id it never sent is a worker error."""
    function_id = f"conformance-probe-{uuid.uuid4()}"
    directory = runner.cwd / "conformance_probe_missing"
    request = HostConnection.load_request(
        function_id,
        "conformance_probe_missing",
        bindings=http_bindings(),
        script_file=str(directory / "missing.txt"),
        directory=str(directory),
    )

    def missing(strays: list[Any]) -> str:
        if strays:
            return (
                f"FunctionLoadResponse carried function_id {strays[0].function_id!r}, not "
                f"{function_id!r}: the host's lookup throws, a worker error"
            )
        return (
            f"no FunctionLoadResponse within {runner.options.timeout:g} s for a function whose "
            "script file does not exist"
        )

    reply = await runner.load(worker, request, missing=missing)
    result = checked_result(reply.result, "FunctionLoadResponse")
    return Outcome.PASS, f"function_id echoed, result {one_line(failure_text(result), 120)}"


async def metadata(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """Worker indexing (``"workerIndexing": "true"``): the functions the worker reports,
    validated as the host validates them, become the functions to load."""
    from ..emulator import discover_functions, functions_from_metadata

    timeout = runner.options.timeout
    reply = await runner.expect(
        worker,
        worker.connection().functions_metadata(str(runner.cwd), timeout=timeout),
        kind="function_metadata_response",
        missing=f"no FunctionMetadataResponse within {timeout:g} s (the host "
        "allows 60 s, then counts a worker error)",
    )
    if reply.use_default_metadata_indexing:
        found, errors = discover_functions(runner.cwd)
        source = "from function.json (the worker answered use_default_metadata_indexing)"
    else:
        found, errors = functions_from_metadata(reply.function_metadata_results, runner.cwd)
        source = "reported by the worker"
    runner.functions = sorted(found, key=lambda spec: spec.disabled)
    names = ", ".join(s.name + (" (disabled)" if s.disabled else "") for s in found)
    summary = f"{len(found)} function(s) {source}" + (f": {names}" if names else "")
    problem = no_result("FunctionMetadataResponse") if reply.result is None else None
    if problem or errors:
        rejected = [f"rejected {e}" for e in errors]
        raise Failed("; ".join([*([problem] if problem else []), *rejected, summary]))
    assert reply.result is not None
    if reply.result.status.name != "Success":
        return Outcome.WARN, (
            f"result {one_line(failure_text(reply.result), 120)} (the host only logs it); "
            + summary
        )
    if not found or runner.app_warnings:
        return Outcome.WARN, "; ".join([*runner.app_warnings, summary])
    return Outcome.PASS, summary


async def restart_load(runner: Runner, worker: LaunchedWorker) -> Verdict:
    """A restarted worker (a process of its own) gets StartStream, init and the loads, but the
    host asks only the first process for metadata: it must load the functions by the ids that
    one reported."""
    await runner.connect(worker)
    await runner.init(worker, runner.options.init_timeout)
    failures = []
    for spec in runner.functions or ():
        try:
            reply = await runner.load(worker, spec.load_request())
        except TimeoutError:
            failures.append(f"{spec.name}: no FunctionLoadResponse")
            continue
        if reply.result is None or reply.result.status.name != "Success":
            answer = "no result" if reply.result is None else failure_text(reply.result)
            failures.append(f"{spec.name}: {one_line(answer, 120)}")
    if failures:
        raise Failed(
            "a restarted worker (which the host never sends FunctionsMetadataRequest) "
            "could not load: " + "; ".join(failures)
        )
    count = len(runner.functions or ())
    return Outcome.PASS, f"a fresh process loaded {count} function(s) without metadata"


async def app(runner: Runner, worker: LaunchedWorker) -> Verdict:
    functions = runner.functions or []
    names = ", ".join(s.name + (" (disabled)" if s.disabled else "") for s in functions)
    problems = runner.app_errors + runner.app_warnings
    if runner.app_errors:
        raise Failed("; ".join(problems) + (f" [loaded: {names}]" if names else ""))
    if not functions:
        return Outcome.WARN, "; ".join([*problems, f"no function.json found under {runner.cwd}"])
    if problems:
        return Outcome.WARN, "; ".join(problems) + f" [{len(functions)} function(s): {names}]"
    return Outcome.PASS, f"{len(functions)} function(s): {names}"


def load_step(spec: FunctionSpec) -> Step:
    """The scenario ``load:NAME``: `spec` loads with Success (else the host fails its
    invocations without sending them)."""

    async def step(runner: Runner, worker: LaunchedWorker) -> Verdict:
        runner.loaded[spec.name] = "not answered"
        request = spec.load_request()

        def missing(strays: list[Any]) -> str:
            extra = f" (one came with function_id {strays[0].function_id!r})" if strays else ""
            return (
                f"no FunctionLoadResponse for {request.function_id!r} within "
                f"{runner.options.timeout:g} s{extra}"
            )

        reply = await runner.load(worker, request, missing=missing)
        result = checked_result(reply.result, "FunctionLoadResponse")
        if result.status.name != "Success":
            runner.loaded[spec.name] = failure_text(result)
            raise Failed(
                f"answered {one_line(failure_text(result))} (the host fails the "
                "function's invocations without sending them)"
            )
        runner.loaded[spec.name] = ""
        return Outcome.PASS, f"Success (function id {request.function_id})"

    return step
