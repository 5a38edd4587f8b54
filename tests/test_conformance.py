"""`workerkit conformance`: it passes good workers (workerkit's and a bare grpcio one), fails
broken ones for the right reason, and validates the cases file.

The non-workerkit worker is a grpcio + protobuf script written into tmp_path; its protobuf
classes are compiled from proto/ (the session `pb2` fixture). Environment variable BROKEN
switches it into one of several deliberately wrong behaviours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, ROOT, arun
from google_pb2 import Pb2

from workerkit.conformance import (
    CasesError,
    ConformanceOptions,
    Outcome,
    Report,
    check_worker,
    load_cases,
    parse_cases,
)

TEMPLATES = EXAMPLES / "templates"
APP = TEMPLATES / "app"
CASES = TEMPLATES / "conformance.json"
WORKERKIT_WORKER = [sys.executable, str(TEMPLATES / "worker.py")]
#: Limits that only catch a hang: a reply or an exit never has to beat them (the scenarios
#: of a good worker pass however slow the machine is).
GENEROUS = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=30)
#: For a worker that never answers WorkerStatusRequest: that reply's timeout is the verdict,
#: and it cannot be set apart from the other replies', which must come within it too.
STATUS_NEVER_ANSWERED = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=10, grace=30)

BARE_WORKER = '''\
"""A language worker with grpcio and protobuf only: the templates worker, minimally."""
import asyncio
import os
import sys

import grpc

sys.path.insert(0, os.environ["PB2_DIR"])
import FunctionRpc_pb2 as pb  # noqa: E402

BROKEN = os.environ.get("BROKEN", "")
SUCCESS, FAILURE = pb.StatusResult.Success, pb.StatusResult.Failure


def parse(argv):
    values = dict(zip(argv[::2], argv[1::2]))
    uri = values.get("--functions-uri")
    target = uri.split("//", 1)[1].rstrip("/") if uri else f"{values['--host']}:{values['--port']}"
    worker_id = values.get("--functions-worker-id") or values["--workerId"]
    request_id = values.get("--functions-request-id") or values.get("--requestId", "")
    return target, worker_id, request_id


def render(template, request):
    fields = {**request.query, **request.params}
    fields.update({k: v.value for k, v in request.nullable_query.items()})
    fields.update({k: v.value for k, v in request.nullable_params.items()})
    try:
        return "200", template.format_map(fields)
    except (KeyError, ValueError) as exc:
        return "400", f"cannot render: {exc!r}\\n"


async def serve(call, outbox, templates):
    async for message in call:
        kind = message.WhichOneof("content")
        reply = pb.StreamingMessage(request_id=message.request_id)
        if kind == "worker_init_request":
            if BROKEN == "never-init":
                continue
            init = reply.worker_init_response
            if BROKEN != "init-without-result":
                init.result.status = SUCCESS
            for name in ("WorkerStatus", "HandlesWorkerTerminateMessage",
                         "HandlesInvocationCancelMessage"):
                init.capabilities[name] = "true"
            init.worker_metadata.runtime_name = "bare-grpcio"
        elif kind == "worker_status_request":
            if BROKEN == "ignore-status":
                continue
            reply.worker_status_response.SetInParent()
        elif kind == "function_environment_reload_request":
            reply.function_environment_reload_response.result.status = SUCCESS
        elif kind == "function_load_request":
            request = message.function_load_request
            loaded = reply.function_load_response
            loaded.function_id = request.function_id
            try:
                with open(request.metadata.script_file) as file:
                    templates[request.function_id] = file.read()
                loaded.result.status = SUCCESS
            except OSError as exc:
                loaded.result.status = FAILURE
                loaded.result.exception.message = f"cannot read the template: {exc}"
        elif kind == "invocation_request":
            request = message.invocation_request
            response = reply.invocation_response
            response.invocation_id = request.invocation_id
            template = templates.get(request.function_id)
            if template is None:
                if BROKEN == "crash-on-unknown-function":
                    os._exit(3)
                response.result.status = FAILURE
                response.result.exception.message = f"unknown function {request.function_id}"
            else:
                http = next(b.data.http for b in request.input_data if b.name == "req")
                status, body = render(template, http)
                response.return_value.http.status_code = status
                response.return_value.http.body.string = body
                response.return_value.http.headers["content-type"] = "text/plain"
                response.result.status = SUCCESS
        elif kind == "worker_terminate":
            return 0
        else:  # InvocationCancel: everything here finishes at once
            continue
        outbox.put_nowait(reply)
        if BROKEN == "double-status" and kind == "worker_status_request":
            outbox.put_nowait(reply)
    if BROKEN == "idle-on-stream-end":  # as the official Python worker does
        await asyncio.sleep(3600)
    return 0 if BROKEN == "exit-0-on-stream-end" else 1


async def main():
    target, worker_id, request_id = parse(sys.argv[1:])
    outbox = asyncio.Queue()
    first = pb.StreamingMessage(request_id="" if BROKEN == "no-request-id" else request_id)
    if BROKEN == "no-start-stream":
        first.worker_heartbeat.SetInParent()
    else:
        first.start_stream.worker_id = "not-my-id" if BROKEN == "wrong-worker-id" else worker_id
    outbox.put_nowait(first)

    async def outgoing():
        while True:
            yield await outbox.get()

    async with grpc.aio.insecure_channel(target) as channel:
        event_stream = channel.stream_stream(
            "/AzureFunctionsRpcMessages.FunctionRpc/EventStream",
            request_serializer=pb.StreamingMessage.SerializeToString,
            response_deserializer=pb.StreamingMessage.FromString,
        )
        try:
            return await serve(event_stream(outgoing()), outbox, {})
        except grpc.aio.AioRpcError:
            return 1


sys.exit(asyncio.run(main()))
'''


@pytest.fixture
def bare_worker(pb2: Pb2, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The bare grpcio worker: its command and the environment it needs."""
    script = tmp_path / "bare_worker.py"
    script.write_text(BARE_WORKER)
    env = {**os.environ, "PB2_DIR": str(Path(str(pb2.rpc.__file__)).parent)}
    return [sys.executable, "-u", str(script)], env


def check(command: list[str], **kwargs: object) -> Report:
    report: Report = arun(check_worker(command, **kwargs), timeout=110)
    return report


def outcomes(report: Report) -> dict[str, Outcome]:
    return {r.name: r.outcome for r in report.results}


def failed(report: Report) -> dict[str, str]:
    return {r.name: r.detail for r in report.results if r.outcome is Outcome.FAIL}


#: The HttpUri scenarios, skipped for a worker that does not report HttpUri.
HTTP_PROXY_ROWS = (
    "http-proxy:request-first",
    "http-proxy:invocation-first",
    "http-proxy:streamed",
    "http-proxy:unmatched",
)


def passed_but_http_proxy(report: Report) -> bool:
    """Every scenario passed, but the HttpUri ones, skipped as the worker reports none."""
    skipped = {r.name: r.detail for r in report.results if r.outcome is Outcome.SKIP}
    passed = {r.name for r in report.results if r.outcome is Outcome.PASS}
    return (
        skipped.keys() == set(HTTP_PROXY_ROWS)
        and set(skipped.values()) == {"skipped: the worker does not report HttpUri"}
        and passed | skipped.keys() == set(outcomes(report))
    )


# -- good workers ------------------------------------------------------------------------------


def test_the_workerkit_template_worker_passes_everything_with_its_app_and_cases() -> None:
    report = check(WORKERKIT_WORKER, app=APP, cases=load_cases(CASES), options=GENEROUS)
    assert report.ok(strict=True), report.table()
    names = [r.name for r in report.results]
    assert names[:3] == ["start-stream", "init", "capabilities"]
    assert {"load:hello", "load:sum", "app", "terminate", "stream-end"} <= set(names)
    assert sum(name.startswith("case:") for name in names) == 4
    assert passed_but_http_proxy(report), report.table()
    assert report.capabilities["WorkerStatus"] == "true"
    details = {r.name: r.detail for r in report.results}
    assert details["case:hello renders the name from the query"] == (
        "Success: $return http 200 'Hello, Ada!\\n'"
    )
    assert details["stream-end"].startswith("exited 1 ")
    assert report.cwd == str(APP)


def test_a_bare_grpcio_worker_passes_too(bare_worker: tuple[list[str], dict[str, str]]) -> None:
    command, env = bare_worker
    report = check(command, app=APP, cases=load_cases(CASES), env=env, options=GENEROUS)
    assert report.ok(strict=True), report.table()
    assert passed_but_http_proxy(report), report.table()
    # It does not declare UseNullableValueDictionaryForHttp: the cases reached it in the
    # plain maps, as the host would send them.
    assert "UseNullableValueDictionaryForHttp" not in report.capabilities


# -- broken workers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "failures"),
    [
        ("no-start-stream", {"start-stream": "the first message was worker_heartbeat"}),
        ("wrong-worker-id", {"start-stream": "StartStream carried worker id 'not-my-id'"}),
        ("ignore-status", {"status": "no WorkerStatusResponse with the request's request_id"}),
        ("init-without-result", {"init": "WorkerInitResponse has no result"}),
        ("double-status", {"message-rules": "unsolicited or second worker_status_response"}),
        ("crash-on-unknown-function", {"unknown-function": "ended the stream (exit status 3)"}),
    ],
)
def test_a_broken_worker_fails_for_the_right_reason(
    bare_worker: tuple[list[str], dict[str, str]], mode: str, failures: dict[str, str]
) -> None:
    command, env = bare_worker
    options = STATUS_NEVER_ANSWERED if mode == "ignore-status" else GENEROUS
    report = check(command, env={**env, "BROKEN": mode}, options=options)
    assert not report.ok()
    found = failed(report)
    assert found.keys() == failures.keys(), report.table()
    for name, text in failures.items():
        assert text in found[name], found[name]
    if mode in ("no-start-stream", "wrong-worker-id"):  # nothing else can run
        rest = [r for r in report.results if r.name != "start-stream"]
        assert {r.outcome for r in rest} == {Outcome.SKIP}
        assert all("never opened its stream" in r.detail for r in rest)
    else:  # the other scenarios still ran (on a fresh process after a crash) and passed
        passed = {r.name for r in report.results if r.outcome is Outcome.PASS}
        passed |= set(HTTP_PROXY_ROWS)  # skipped: the bare worker reports no HttpUri
        if mode == "init-without-result":  # nothing to reload on a process that never started
            (reload,) = [r for r in report.results if r.name == "environment-reload"]
            assert reload.outcome is Outcome.SKIP
            assert "init for a placeholder app failed" in reload.detail
            passed.add(reload.name)
        assert passed | failures.keys() == {r.name for r in report.results}
    if mode == "crash-on-unknown-function":
        later = {r.name: r.detail for r in report.results}["cancel-unknown"]
        assert later.endswith("(on a fresh worker, #2)")


def test_a_worker_left_running_when_its_stream_ends_is_an_orphan(
    bare_worker: tuple[list[str], dict[str, str]],
) -> None:
    """The host notices a stream that ended only when the worker exits (WorkerProcess in
    Azure/azure-functions-host); one that idles on is never replaced, nor ever ended."""
    command, env = bare_worker
    # The grace period is the verdict (this worker never exits, however long it is given).
    options = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=3)
    report = check(command, env={**env, "BROKEN": "idle-on-stream-end"}, options=options)
    (result,) = [r for r in report.results if r.name == "stream-end"]
    assert result.outcome is Outcome.FAIL
    assert result.detail.startswith(
        "still running 3 s after the host ended the stream: an orphan process"
    ), result.detail
    assert "the official Python worker idles like this for ever" in result.detail


def test_exit_status_0_when_the_stream_ends_is_a_warning(
    bare_worker: tuple[list[str], dict[str, str]],
) -> None:
    """Exit status 0 is neither an error nor a restart to the host: WorkerProcess
    .OnProcessExited only closes the process (Azure/azure-functions-host), so the worker is
    not replaced."""
    command, env = bare_worker
    report = check(command, env={**env, "BROKEN": "exit-0-on-stream-end"}, options=GENEROUS)
    (warning,) = [r for r in report.results if r.outcome is Outcome.WARN]
    assert warning.name == "stream-end"
    assert warning.detail.startswith("exited with status 0 after ")
    assert "exit status 0 is neither an error nor a restart request" in warning.detail
    assert report.ok() and not report.ok(strict=True)


def test_a_missing_request_id_on_start_stream_is_only_a_warning(
    bare_worker: tuple[list[str], dict[str, str]],
) -> None:
    command, env = bare_worker
    report = check(command, env={**env, "BROKEN": "no-request-id"}, options=GENEROUS)
    (warning,) = [r for r in report.results if r.outcome is Outcome.WARN]
    assert warning.name == "start-stream"
    assert "StartStream.request_id is '', not the --requestId" in warning.detail
    assert report.ok() and not report.ok(strict=True)


def test_a_worker_that_never_answers_init_fails_init_and_nothing_else_runs(
    bare_worker: tuple[list[str], dict[str, str]],
) -> None:
    command, env = bare_worker
    # The init timeout is the verdict (the worker never answers, so no machine is too slow
    # for it); the other limits only catch a hang.
    never = ConformanceOptions(start_timeout=60, init_timeout=1, timeout=30, grace=30)
    report = check(command, env={**env, "BROKEN": "never-init"}, options=never)
    assert failed(report) == {
        "init": "no WorkerInitResponse within 1 s (initializationTimeout: the host would "
        "restart the worker)"
    }
    later = [r for r in report.results if r.name not in ("start-stream", "init", "stream-end")]
    assert {r.outcome for r in later} == {Outcome.SKIP}
    # stream-end runs on its own process and does not need init to have worked.
    assert outcomes(report)["stream-end"] is Outcome.PASS


def test_capabilities_not_advertised_are_skipped_not_failed(tmp_path: Path) -> None:
    worker = tmp_path / "quiet_worker.py"
    worker.write_text(
        "import workerkit\n"
        "from workerkit import InitResult\n\n"
        "class Quiet(workerkit.Worker):\n"
        "    def on_init(self, request):\n"
        "        return InitResult(capabilities={'WorkerStatus': '', "
        "'HandlesInvocationCancelMessage': ''})\n"
        "    def on_function_load(self, function):\n"
        "        pass\n"
        "    def on_invocation(self, invocation):\n"
        "        return None\n\n"
        "Quiet.main()\n"
    )
    report = check([sys.executable, str(worker)], options=GENEROUS)
    results = {r.name: r for r in report.results}
    assert results["status"].outcome is Outcome.SKIP
    assert results["status"].detail == "skipped (not advertised: WorkerStatus)"
    assert results["cancel-unknown"].outcome is Outcome.SKIP
    # Empty values are what the host treats as absent: flagged, not fatal.
    assert results["capabilities"].outcome is Outcome.WARN
    assert "HandlesInvocationCancelMessage NO" in results["capabilities"].detail
    assert report.ok() and not report.ok(strict=True)


# -- cases -------------------------------------------------------------------------------------


def test_a_case_whose_expectation_is_not_met_fails_with_what_differed(tmp_path: Path) -> None:
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "wrong body",
                    "function": "hello",
                    "inputs": {"req": "/api/hello?name=Ada"},
                    "expect": {"http": {"status": 201, "body": "Hi, Ada!\n"}},
                },
                {
                    "name": "no such function",
                    "function": "goodbye",
                    "inputs": {"req": "/api/goodbye"},
                },
                {
                    "name": "expects a failure",
                    "function": "sum",
                    "inputs": {"req": "/api/sum/1/2"},
                    "expect": {"status": "Failure", "error": "boom"},
                },
            ]
        }
    )
    report = check(WORKERKIT_WORKER, app=APP, cases=cases, options=GENEROUS)
    found = failed(report)
    assert found == {
        "case:wrong body": (
            "$return: status 200, expected 201; body 'Hello, Ada!\\n', expected 'Hi, Ada!\\n'"
        ),
        "case:no such function": "no function 'goodbye' in the app (functions: hello, sum)",
        "case:expects a failure": "expected Failure, got Success",
    }


QUEUE_WORKER = """\
import asyncio
import workerkit
from workerkit import InvocationError, InvocationResult


class Queue(workerkit.Worker):
    def on_function_load(self, function):
        pass

    async def on_invocation(self, invocation):
        name = invocation.function.name
        if name == "echo":
            count = invocation.trigger_metadata["DequeueCount"]
            return InvocationResult(outputs={"out": f"{invocation.inputs['msg']} x{count}"})
        if name == "blob":
            return invocation.inputs["data"][::-1]
        if name == "slow":
            await asyncio.sleep(30)
        raise InvocationError("boom: " + invocation.inputs["msg"])


Queue.main()
"""


def write_function(app: Path, name: str, bindings: list[dict[str, str]]) -> None:
    (app / name).mkdir(parents=True)
    (app / name / "run.txt").write_text("")
    (app / name / "function.json").write_text(
        json.dumps({"scriptFile": "run.txt", "bindings": bindings})
    )


def test_non_http_cases_outputs_typed_values_failures_and_cancel(tmp_path: Path) -> None:
    app = tmp_path / "app"
    queue = {"type": "queueTrigger", "direction": "in", "name": "msg"}
    write_function(app, "echo", [queue, {"type": "queue", "direction": "out", "name": "out"}])
    write_function(
        app,
        "blob",
        [
            {"type": "blobTrigger", "direction": "in", "name": "data", "dataType": "binary"},
            {"type": "blob", "direction": "out", "name": "$return"},
        ],
    )
    write_function(app, "slow", [queue])
    write_function(app, "fails", [queue])
    worker = tmp_path / "queue_worker.py"
    worker.write_text(QUEUE_WORKER)
    cases = parse_cases(
        [
            {
                "name": "echo",
                "function": "echo",
                "inputs": {"msg": "hi"},
                "trigger_metadata": {"DequeueCount": {"$json": 2}},
                "expect": {"outputs": {"out": {"$string": "hi x2"}}, "return_value": None},
            },
            {
                "name": "binary in, bytes out",
                "function": "blob",
                "inputs": {"data": "abc"},
                "expect": {"return_value": {"$bytes": "Y2Jh"}},
            },
            {
                "name": "failure text",
                "function": "fails",
                "inputs": {"msg": "bad input"},
                "expect": {"status": "Failure", "error": "boom: bad input"},
            },
            {
                "name": "cancelled",
                "function": "slow",
                "inputs": {"msg": "x"},
                "cancel_after": 0.2,
                "expect": {"status": "Cancelled"},
            },
            {
                "name": "wrong output",
                "function": "echo",
                "inputs": {"msg": "hi"},
                "trigger_metadata": {"DequeueCount": {"$json": 1}},
                "expect": {"outputs": {"out": "hi x2"}},
            },
        ]
    )
    report = check([sys.executable, str(worker)], app=app, cases=cases, options=GENEROUS)
    results = {r.name: r for r in report.results}
    assert failed(report) == {
        "case:wrong output": "outputs.out: expected 'hi x2', got 'hi x1'",
    }, report.table()
    assert results["case:echo"].detail == "Success: out string 'hi x2'"
    assert results["case:binary in, bytes out"].detail == "Success: $return bytes b'cba'"
    assert results["case:cancelled"].outcome is Outcome.PASS
    assert results["case:failure text"].outcome is Outcome.PASS


INDEXING_WORKER = """\
import workerkit
from workerkit import FunctionMetadata, HttpResponse

HTTP = [
    {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]},
    {"type": "http", "direction": "out", "name": "$return"},
]


class Indexing(workerkit.Worker):
    def on_functions_metadata(self, request):
        return [FunctionMetadata("shout", script_file="shout.py", bindings=HTTP)]

    def on_function_load(self, function):
        pass

    def on_invocation(self, invocation):
        return HttpResponse(body=invocation.inputs["req"].query.get("word", "").upper())


Indexing.main()
"""


def test_worker_indexing_loads_what_the_worker_reports_also_after_a_restart(
    tmp_path: Path,
) -> None:
    worker = tmp_path / "indexing_worker.py"
    worker.write_text(INDEXING_WORKER)
    cases = parse_cases(
        [
            {
                "name": "shout",
                "function": "shout",
                "inputs": {"req": "/api/shout?word=hey"},
                "expect": {"http": {"status": 200, "body": "HEY"}},
            }
        ]
    )
    report = check(
        [sys.executable, str(worker)],
        cases=cases,
        cwd=tmp_path,
        worker_indexing=True,
        options=GENEROUS,
    )
    assert report.ok(strict=True), report.table()
    results = {r.name: r for r in report.results}
    assert results["metadata"].detail == "1 function(s) reported by the worker: shout"
    assert results["restart-load"].outcome is Outcome.PASS
    assert results["case:shout"].outcome is Outcome.PASS
    assert "app" not in results


def test_cases_file_errors_name_the_case_and_key(tmp_path: Path) -> None:
    bad = {
        '{"cases": [{"name": "a", "function": "f", "expcet": {}}]}': (
            "case 'a': unknown key 'expcet'"
        ),
        '{"cases": [{"function": "f"}]}': 'case #1 needs a "name"',
        '{"cases": [{"name": "a", "function": "f", "inputs": {"x": {"$bytes": "%%"}}}]}': (
            "case 'a': inputs.x: '%%' is not valid base64"
        ),
        '{"cases": [{"name": "a", "function": "f", "inputs": {"x": {"$strng": "1"}}}]}': (
            "unknown typed value '$strng'"
        ),
        '{"cases": [{"name": "a", "function": "f", "expect": {"status": "OK"}}]}': (
            "expect.status must be one of Success, Failure, Cancelled"
        ),
        '{"cases": [{"name": "a", "function": "f"}, {"name": "a", "function": "g"}]}': (
            "case 'a': the name is used twice"
        ),
        '{"cases": [}': "not valid JSON",
    }
    for index, (text, message) in enumerate(bad.items()):
        path = tmp_path / f"cases{index}.json"
        path.write_text(text)
        with pytest.raises(CasesError, match=None) as caught:
            load_cases(path)
        assert message in str(caught.value), (text, str(caught.value))
        assert str(path) in str(caught.value)


def test_typed_values_and_comments_are_accepted() -> None:
    (case,) = parse_cases(
        [
            {
                "// note": "comments are keys starting with //",
                "name": "typed",
                "function": "f",
                "inputs": {"a": {"$int": 3}, "b": {"$bytes": "aGk="}, "c": [1, 2]},
                "trigger_metadata": {"DequeueCount": {"$json": 1}},
                "expect": {"outputs": {"o": {"$string": "x"}}, "return_value": None},
                "cancel_after": 0.5,
            }
        ]
    )
    assert case.inputs["a"] == {"$int": 3}
    assert case.expect.return_value is None
    assert case.cancel_after == 0.5


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workerkit", "conformance", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_cli_passes_the_template_worker_and_prints_a_table() -> None:
    # Paths relative to the current directory work although the worker runs in the app.
    proc = run_cli(
        "--app",
        "examples/templates/app",
        "--cases",
        "examples/templates/conformance.json",
        *("--init-timeout", "30", "--timeout", "30", "--grace", "30"),  # only catch a hang
        "--",
        sys.executable,
        "examples/templates/worker.py",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["terminate", "pass"] for line in lines if line.strip())
    assert lines[-1] == "18 pass, 0 fail, 0 warn, 4 skip"  # the HttpUri scenarios


def test_cli_exit_status_and_json_for_a_broken_worker(
    bare_worker: tuple[list[str], dict[str, str]],
) -> None:
    command, env = bare_worker
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workerkit",
            "conformance",
            "--json",
            "--timeout",
            "30",
            "--grace",
            "30",
            "--",
            *command,
        ],
        cwd=ROOT,
        env={**env, "BROKEN": "double-status"},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert data["counts"]["fail"] == 1
    (failure,) = [s for s in data["scenarios"] if s["result"] == "fail"]
    assert failure["name"] == "message-rules"
    assert data["capabilities"]["WorkerStatus"] == "true"


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "cases.json"
    broken.write_text('{"cases": [{"name": "x"}]}')
    assert run_cli().returncode == 2
    proc = run_cli("--app", str(APP), "--cases", str(broken), "--", "true")
    assert proc.returncode == 2
    assert 'needs a "function"' in proc.stderr
    proc = run_cli("--cases", str(CASES), "--", "true")
    assert proc.returncode == 2 and "--cases needs --app" in proc.stderr


def test_public_names() -> None:
    import workerkit.conformance as conformance

    assert len(set(conformance.__all__)) == len(conformance.__all__)
    assert all(getattr(conformance, name, None) is not None for name in conformance.__all__)
    from workerkit.__main__ import COMMANDS

    assert COMMANDS["conformance"] == "workerkit.conformance"
    # The command's plumbing is reachable for `workerkit` but not exported.
    assert callable(conformance.configure) and callable(conformance.run) and conformance.HELP
    assert not {"HELP", "configure", "run"} & set(conformance.__all__)


def test_a_reply_that_does_not_come_is_judged_in_one_place() -> None:
    """`Runner.expect`, which every scenario awaits its replies with: a late reply becomes
    expected, and `missing` decides (a text fails, a function sees the replies that came with
    another id, None lets the TimeoutError through)."""
    from workerkit._generated import AzureFunctionsRpcMessages as pb
    from workerkit.conformance._runner import Failed, LaunchedWorker, Missing, Runner

    class Connection:
        unmatched = [
            pb.StreamingMessage(function_load_response=pb.FunctionLoadResponse(function_id="x"))
        ]

    worker = LaunchedWorker(process=None, args=None, conn=Connection())  # type: ignore[arg-type]
    runner = Runner(
        None,  # type: ignore[arg-type]
        ["worker"],
        cwd=ROOT,
        env={},
        worker_dir="",
        functions=None,
        app_errors=(),
        cases=(),
        options=ConformanceOptions(),
    )

    async def late() -> int:
        raise TimeoutError

    async def answer() -> int:
        return 42

    def expect(
        kind: str,
        key: str = "",
        missing: Missing = None,
        reply: Coroutine[Any, Any, int] | None = None,
    ) -> int:
        result: int = arun(
            runner.expect(worker, reply or late(), kind=kind, key=key, missing=missing)
        )
        return result

    assert expect("worker_init_response", reply=answer()) == 42
    with pytest.raises(Failed, match=r"^no WorkerInitResponse$"):
        expect("worker_init_response", missing="no WorkerInitResponse")
    with pytest.raises(TimeoutError):
        expect("function_environment_reload_response")
    seen: list[list[str]] = []

    def wrong_id(strays: list[pb.FunctionLoadResponse]) -> str | None:
        seen.append([stray.function_id for stray in strays])
        return "came with another id" if strays else None

    with pytest.raises(Failed, match="came with another id"):
        expect("function_load_response", "f1", wrong_id)
    with pytest.raises(TimeoutError):  # the stray reply was explained the first time
        expect("function_load_response", "f2", wrong_id)
    assert seen == [["x"], []]
    assert worker.timed_out == {
        ("worker_init_response", ""),
        ("function_environment_reload_response", ""),
        ("function_load_response", "f1"),
        ("function_load_response", "f2"),
    }
