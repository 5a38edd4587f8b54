"""`workerkit host` end to end: real HTTP requests on 127.0.0.1, real worker subprocesses.

Most tests share one emulator (module fixture) serving tests/emulator_worker.py; scenarios
that end or restart the worker get their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import eventually
from emulator_support import (
    Response,
    RunningEmulator,
    http_function,
    request,
    trigger_function,
    write_app,
    write_worker,
)

from workerkit.emulator import EmulatorError, EmulatorOptions

ROOT = Path(__file__).resolve().parent.parent
QUEUE_OUT = {"type": "queue", "direction": "out", "name": "out", "queueName": "next"}


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    root = tmp_path_factory.mktemp("main")
    app = write_app(
        root,
        {
            "echo": http_function(),
            "echo-items": http_function(["get"], route="items/{id:int}/{rest?}"),
            "echo-files": http_function(None, route="files/{*path}"),
            "respond": http_function(["get"]),
            "object": http_function(["get"]),
            "fail": http_function(["get"]),
            "slow": http_function(["get"]),
            "nobody": http_function(["get"]),
            "off": http_function(["get"]),  # disabled by its app setting (below)
            "broken-load": http_function(["get"]),
            "queue": trigger_function({"type": "queueTrigger", "queueName": "q"}, QUEUE_OUT),
            "blob": trigger_function({"type": "blobTrigger", "path": "samples/{name}"}),
            "grid": trigger_function({"type": "eventGridTrigger"}),
            "nobindings": {"bindings": []},  # broken JSON stops start-up: test_emulator_files
            "badscript": {**http_function(), "scriptFile": "../../outside.txt"},
        },
        host={"functionTimeout": "00:00:02"},
        settings={"WK_SETTING": "from-settings", "AzureWebJobs.off.Disabled": "true"},
    )
    worker = write_worker(root)
    options = EmulatorOptions(app, worker, port=0, max_body_size=1024, environ=os.environ)
    # verbose: the protocol lines show when the worker answers a cancel
    running = RunningEmulator(options, verbose=True).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0


# -- HTTP triggers ----------------------------------------------------------------------------
def test_start_up_lists_the_functions_with_urls(main: RunningEmulator) -> None:
    out = main.output
    assert f"echo: [GET,POST] {main.url}/api/echo" in out
    assert f"echo-items: [GET] {main.url}/api/items/{{id:int}}/{{rest?}}" in out
    assert f"queue: queueTrigger: POST {main.url}/admin/functions/queue" in out
    assert "off: [GET]" in out and "(disabled)" in out
    assert "Worker process started and initialized" in out


def test_a_get_carries_query_headers_and_the_worker_environment(main: RunningEmulator) -> None:
    reply = main.request("GET", "/api/echo?name=Ada&x=1&x=2&empty=", headers={"X-Test": "a"})
    assert reply.status == 200, reply.text
    seen = reply.json()
    assert seen["method"] == "GET"
    assert seen["url"] == f"{main.url}/api/echo?name=Ada&x=1&x=2&empty="
    assert seen["query"] == {"name": "Ada", "x": "1,2", "empty": ""}
    assert seen["headers"]["x-test"] == "a"
    # workerkit declares UseNullableValueDictionaryForHttp: only the nullable maps are filled
    assert seen["nullable_maps"] == ["headers", "query"] and seen["plain_maps"] == []
    assert seen["body_kind"] == "absent"
    # ... and RpcHttpTriggerMetadataRemoved: no $request / req copies
    assert {"Query", "Headers", "name", "x"} <= set(seen["metadata"])
    assert "$request" not in seen["metadata"] and "req" not in seen["metadata"]
    app = main.emulator.app_dir
    assert seen["cwd"] == str(app)
    assert seen["env"] == {
        "FUNCTIONS_WORKER_RUNTIME": "emulated",
        "FUNCTIONS_WORKER_DIRECTORY": str(Path(str(main.options.worker_dir)).resolve()),
        "FUNCTIONS_APPLICATION_DIRECTORY": str(app),
        "WK_SETTING": "from-settings",
    }
    main.wait_for("echo (")  # the worker's log line, attributed to the function


def test_a_post_body_arrives_as_bytes_for_a_raw_bytes_worker(main: RunningEmulator) -> None:
    body = json.dumps({"a": 1}).encode()
    reply = main.request("POST", "/api/echo", body, {"Content-Type": "application/json"})
    seen = reply.json()
    assert seen["body"] == '{"a": 1}'
    assert (seen["body_kind"], seen["raw_body_kind"]) == ("bytes", "absent")
    assert "a" in seen["metadata"]  # top-level properties of a JSON body


def test_route_templates_with_constraints_optional_and_catch_all(main: RunningEmulator) -> None:
    assert main.request("GET", "/api/items/42").json()["params"] == {"id": "42"}
    assert main.request("GET", "/api/items/42/more").json()["params"] == {
        "id": "42",
        "rest": "more",
    }
    assert main.request("GET", "/api/ITEMS/7").status == 200  # literals ignore case
    assert main.request("GET", "/api/items/abc").status == 404  # {id:int}
    assert main.request("GET", "/api/items/1/2/3").status == 404
    files = main.request("DELETE", "/api/files/a/b%20c/d.txt").json()
    assert files["params"] == {"path": "a/b c/d.txt"} and files["method"] == "DELETE"


def test_unknown_routes_and_wrong_methods_are_an_empty_404(main: RunningEmulator) -> None:
    """The host's routes constrain methods (HttpMethodRouteConstraint), so a method a route
    does not take is no match: ASP.NET Core's empty 404, no 405 (item 15)."""
    for path in ("/api/nothing-here", "/echo"):  # the second is outside the route prefix
        reply = main.request("GET", path)
        assert (reply.status, reply.body) == (404, b"")
    reply = main.request("POST", "/api/items/1", b"x")
    assert (reply.status, reply.body, reply.headers["Allow"]) == (404, b"", None)
    main.wait_for("POST /api/items/1: the route takes GET only; answered 404")


def test_a_body_over_the_limit_is_413(main: RunningEmulator) -> None:
    reply = main.request("POST", "/api/echo", b"x" * 2048)
    assert reply.status == 413
    assert "1024" in reply.text
    assert main.request("POST", "/api/echo", b"x" * 1024).status == 200


def test_a_failing_function_is_an_empty_500_and_logged(main: RunningEmulator) -> None:
    """The host's ExceptionMiddleware answers a failed invocation 500 with no body; the
    console keeps the error (item 15)."""
    reply = main.request("GET", "/api/fail")
    assert (reply.status, reply.body) == (500, b"")
    out = main.wait_for("Executed 'Functions.fail' (Failed")
    assert "RuntimeError" in out and "the function failed on purpose" in out


def test_a_function_past_its_timeout_is_500_and_the_worker_keeps_serving(
    main: RunningEmulator,
) -> None:
    started = time.monotonic()
    reply = main.request("GET", "/api/slow?seconds=3600", timeout=60)  # only a timeout ends it
    answered = time.monotonic() - started
    assert (reply.status, reply.body) == (500, b"")
    main.wait_for("Timeout value of 0:00:02 was exceeded by function: Functions.slow")
    # workerkit answers the InvocationCancel (Cancelled), so no restart is needed
    main.wait_answered(main.invocation_ids("slow")[-1], "Cancelled")
    assert main.request("GET", "/api/echo").status == 200
    assert "Restarting worker process" not in main.output
    print(f"\nfunctionTimeout 2 s: the 500 came {answered:.2f} s after the request")


def test_host_json_http_throttles_queue_requests_then_answer_429(tmp_path: Path) -> None:
    """maxConcurrentRequests 1 and maxOutstandingRequests 2, as the host applies them: one
    request runs, one waits its turn, one more is answered 429 with the host's scale-out
    header and no body; /admin requests are never throttled."""
    release = tmp_path / "release"
    app = write_app(
        tmp_path,
        {"slow": http_function(["get"]), "echo": http_function(["get"])},
        host={"extensions": {"http": {"maxConcurrentRequests": 1, "maxOutstandingRequests": 2}}},
    )
    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    threads: list[threading.Thread] = []
    try:
        assert running.start_error is None, running.output
        until = urllib.parse.quote(str(release))
        slow: list[Response] = []
        more: list[Response] = []
        threads.append(
            threading.Thread(
                target=lambda: slow.append(
                    running.request("GET", f"/api/slow?until={until}", timeout=60)
                )
            )
        )
        threads[0].start()
        running.wait_for("Executing 'Functions.slow'")
        for _ in range(2):  # the first to arrive waits its turn; the queue is then full
            threads.append(
                threading.Thread(
                    target=lambda: more.append(running.request("GET", "/api/echo", timeout=60))
                )
            )
            threads[-1].start()
        [refused] = eventually(lambda: list(more), "an answer to one of the two requests")
        assert (refused.status, refused.body) == (429, b"")
        assert refused.headers["X-FUNCTION-SCALEOUT"] == "1"
        assert running.request("GET", "/admin/host/status").status == 200
        release.touch()
        for thread in threads:
            thread.join(60)
        assert [r.status for r in slow] == [200]
        assert sorted(r.status for r in more) == [200, 429]
        running.wait_for("Http request queue limit of 2 has been exceeded")
        assert running.request("GET", "/api/echo").status == 200
    finally:
        release.touch()
        for thread in threads:
            thread.join(60)
        assert running.stop() == 0


def test_response_status_headers_cookies_and_bodies(main: RunningEmulator) -> None:
    reply = main.request("GET", "/api/respond?status=201&body=hi")
    assert (reply.status, reply.text) == (201, "hi")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["x-custom"] == "yes"
    assert reply.headers.get_all("Set-Cookie") == [
        "session=a%20b; path=/api; samesite=lax; httponly",
        "plain=1; path=/",
    ]
    raw = main.request("GET", "/api/respond?bytes=1&type=application/x-thing")
    assert raw.body == bytes(range(256))
    assert raw.headers["Content-Type"] == "application/x-thing"
    assert main.request("GET", "/api/nobody").status == 204


def test_json_outputs_are_reindented_or_read_as_a_response_object(main: RunningEmulator) -> None:
    plain = main.request("GET", "/api/object")
    assert plain.status == 200
    assert plain.text == json.dumps({"a": [1, 2], "b": "text"}, indent=2)
    assert plain.headers["Content-Type"].startswith("application/json")
    described = main.request("GET", "/api/object?describe=1")
    assert (described.status, described.text) == (201, "described")
    assert described.headers["x-described"] == "1"


def test_disabled_functions_are_404_and_failed_loads_500(main: RunningEmulator) -> None:
    assert main.request("GET", "/api/off").status == 404
    reply = main.request("GET", "/api/broken-load")
    assert (reply.status, reply.body) == (500, b"")
    main.wait_for("function 'broken-load' failed to load")
    assert "Worker failed to load function: 'broken-load'" in main.output


def test_broken_function_folders_are_reported_and_skipped(main: RunningEmulator) -> None:
    out = main.output
    assert "The following 2 functions are in error" in out
    assert "nobindings:" in out and "At least one binding must be declared." in out
    assert "badscript:" in out and "points outside the function app directory" in out
    assert main.request("GET", "/api/badscript").status == 404


def test_the_templates_example_as_make_demo_runs_it() -> None:
    templates = ROOT / "examples" / "templates"
    environ = {**os.environ, "languageWorkers__templates__defaultExecutablePath": sys.executable}
    options = EmulatorOptions(templates / "app", templates, port=0, environ=environ)
    running = RunningEmulator(options).start()
    try:
        assert running.start_error is None, running.output
        assert f"sum: [GET] {running.url}/api/sum/{{a}}/{{b}}" in running.output
        hello = running.request("GET", "/api/hello?name=Ada")
        assert (hello.status, hello.text) == (200, "Hello, Ada!\n")
        assert running.request("GET", "/api/sum/3/4").text == "3 and 4\n"
        assert running.request("GET", "/api/hello").status == 400
        running.wait_for("hello (")  # the template worker's log line
    finally:
        assert running.stop() == 0


# -- other triggers through the admin endpoint ------------------------------------------------
def test_a_queue_message_through_the_admin_endpoint(main: RunningEmulator) -> None:
    reply = main.request("POST", "/admin/functions/queue", json.dumps({"input": "hello"}).encode())
    assert reply.status == 202
    main.wait_for(lambda _: bool(main.records("queue")))
    record = main.records("queue")[0]
    assert (record["kind"], record["value"]) == ("string", "hello")
    metadata = record["metadata"]
    assert metadata["DequeueCount"] == 1 and metadata["QueueTrigger"] == "hello"
    assert {"Id", "PopReceipt", "InsertionTime", "ExpirationTime", "NextVisibleTime"} <= set(
        metadata
    )
    main.wait_for("output 'out' (queue): \"forwarded 'hello'\"")


def test_a_blob_through_the_admin_endpoint_arrives_as_bytes(main: RunningEmulator) -> None:
    body = json.dumps({"input": "blob content", "metadata": {"name": "a.txt"}}).encode()
    assert main.request("POST", "/admin/functions/BLOB", body).status == 202  # any case
    main.wait_for(lambda _: bool(main.records("blob")))
    record = main.records("blob")[0]
    assert record["kind"] == "bytes" and record["value"] == {"bytes": "blob content"}
    assert record["metadata"]["BlobTrigger"] == "samples/emulated"
    assert record["metadata"]["name"] == "a.txt"
    assert record["metadata"]["Properties"]["Length"] == len("blob content")


def test_admin_endpoint_errors(main: RunningEmulator) -> None:
    assert main.request("POST", "/admin/functions/nosuch", b'{"input": ""}').status == 404
    assert main.request("POST", "/admin/functions/queue", b"not json").status == 400
    assert main.request("POST", "/admin/functions/queue", b'{"input": 3}').status == 400
    assert main.request("POST", "/admin/functions/echo", b'{"input": ""}').status == 400
    assert main.request("POST", "/admin/functions/grid", b'{"input": "not an event"}').status == 400
    assert main.request("GET", "/admin/functions/queue").status == 405
    assert main.request("GET", "/admin/host/status").json()["state"] == "Running"
    event = json.dumps({"input": json.dumps({"id": "1", "eventType": "x"})}).encode()
    assert main.request("POST", "/admin/functions/grid", event).status == 202
    main.wait_for(lambda _: bool(main.records("grid")))
    assert main.records("grid")[0]["kind"] == "json"


# -- scenarios with their own emulator ---------------------------------------------------------
def test_timer_with_a_seconds_schedule_and_run_on_startup(tmp_path: Path) -> None:
    timer = {"type": "timerTrigger", "schedule": "*/1 * * * * *", "runOnStartup": True}
    app = write_app(tmp_path, {"tick": trigger_function(timer)})
    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        assert "tick: timerTrigger (*/1 * * * * *, runOnStartup)" in running.output
        running.wait_for(lambda _: len(running.records("tick")) >= 3, what="three ticks")
    finally:
        assert running.stop() == 0
    first, second = running.records("tick")[:2]
    assert first["kind"] == "json"
    assert set(first["value"]) == {"Schedule", "ScheduleStatus", "IsPastDue"}
    assert first["value"]["ScheduleStatus"]["Last"] == "0001-01-01T00:00:00"  # startup run
    assert second["value"]["ScheduleStatus"]["Last"] != "0001-01-01T00:00:00"
    assert "Reason='Timer fired at" in running.output


def test_worker_indexing_and_legacy_http_capabilities(tmp_path: Path) -> None:
    http = [
        {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["post"]},
        {"type": "http", "direction": "out", "name": "$return"},
    ]
    index = [
        {"name": "echo-indexed", "bindings": http},
        {
            "name": "bad_binding",
            "bindings": [{"type": "httpTrigger", "direction": "in", "name": "r_1"}],
        },
    ]
    legacy = dict.fromkeys(
        [
            "RpcHttpBodyOnly",
            "RawHttpBodyBytes",
            "UseNullableValueDictionaryForHttp",
            "RpcHttpTriggerMetadataRemoved",
        ],
        "",
    )
    app = write_app(
        tmp_path, {}, settings={"WK_INDEX": json.dumps(index), "WK_CAPS": json.dumps(legacy)}
    )
    worker = write_worker(tmp_path, description={"workerIndexing": "true"})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0), verbose=True).start()
    try:
        assert running.start_error is None, running.output
        out = running.output
        assert "host → worker functions_metadata_request" in out
        assert f"echo-indexed: [POST] {running.url}/api/echo-indexed" in out
        assert "bad_binding: " in out and "the worker reported a failure" in out and "r_1" in out
        reply = running.request(
            "POST", "/api/echo-indexed?a=1&e=", b'{"k": [1]}', {"Content-Type": "application/json"}
        )
        seen = reply.json()
        assert (seen["body_kind"], seen["raw_body_kind"]) == ("json", "string")
        assert seen["plain_maps"] == ["headers", "query"] and seen["nullable_maps"] == []
        assert seen["query"] == {"a": "1"}  # plain maps drop empty query values
        assert {"$request", "req", "k"} <= set(seen["metadata"])
    finally:
        assert running.stop() == 0


def test_a_crashing_worker_is_restarted_then_the_emulator_gives_up(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"crash": http_function(["get"]), "echo": http_function(["get"])})
    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    assert running.start_error is None, running.output
    reply = running.request("GET", "/api/crash")
    assert (reply.status, reply.body) == (500, b"")
    running.wait_for("exited with status 3 during the invocation")
    running.wait_for(lambda out: out.count("Worker process started and initialized") == 2)
    assert running.request("GET", "/api/echo").status == 200  # the restarted worker serves
    assert running.request("GET", "/api/crash").status == 500
    running.wait_for(lambda out: out.count("Worker process started and initialized") == 3)
    assert running.request("GET", "/api/crash").status == 500
    assert running.wait_exit(60) == 1
    assert "the worker failed 3 times" in running.output
    assert "Language Worker Process exited with status 3" in running.output


def test_a_worker_ignoring_a_timed_out_invocation_is_restarted(tmp_path: Path) -> None:
    # Without HandlesInvocationCancelMessage the host cannot cancel; after the grace period it
    # restarts the worker (not counted as an error). Without HandlesWorkerTerminateMessage it
    # kills the process instead of sending WorkerTerminate.
    caps = {"HandlesInvocationCancelMessage": "", "HandlesWorkerTerminateMessage": ""}
    app = write_app(
        tmp_path,
        {"slow": http_function(["get"]), "echo": http_function(["get"])},
        host={"functionTimeout": "00:00:01"},
        settings={"WK_CAPS": json.dumps(caps)},
    )
    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/slow?seconds=30").status == 500
        running.wait_for("Restarting worker process executing invocationId")
        running.wait_for(lambda out: out.count("Worker process started and initialized") == 2)
        assert running.request("GET", "/api/echo").status == 200
        assert "the worker failed" not in running.output
    finally:
        assert running.stop() == 0


def test_a_worker_exiting_0_unasked_stops_the_emulator(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"exit0": http_function(["get"])})
    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    assert running.start_error is None, running.output
    assert running.request("GET", "/api/exit0").status == 500
    assert running.wait_exit(60) == 1
    assert "exited with status 0 without being asked" in running.output


def test_a_worker_that_cannot_start_fails_start_up(tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text("import sys\nprint('no luck', file=sys.stderr)\nsys.exit(1)\n")
    app = write_app(tmp_path, {"echo": http_function()})
    worker = write_worker(tmp_path, description={"defaultWorkerPath": str(script)})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    assert isinstance(running.start_error, EmulatorError)
    message = str(running.start_error)
    assert "worker.config.json" in message and "failed 3 times" in message
    assert "no luck" in running.output


def test_the_worker_directory_can_come_from_the_hosts_setting(tmp_path: Path) -> None:
    worker = write_worker(tmp_path)
    app = write_app(tmp_path, {"echo": http_function(["get"])})
    missing = RunningEmulator(EmulatorOptions(app, port=0, environ={})).start()
    assert "no worker: pass --worker DIR" in str(missing.start_error)
    environ = {
        **os.environ,
        "FUNCTIONS_WORKER_RUNTIME": "emulated",
        "languageWorkers__emulated__workerDirectory": str(worker),
    }
    running = RunningEmulator(EmulatorOptions(app, port=0, environ=environ)).start()
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/echo").status == 200
    finally:
        assert running.stop() == 0


def test_graceful_shutdown_with_an_invocation_in_flight(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"slow": http_function(["get"])})
    worker = write_worker(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workerkit",
            "host",
            str(app),
            "--worker",
            str(worker),
            "--port",
            "0",
            "--verbose",  # the worker's System logs at Information, as func start --verbose
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        url = _wait_line(lines, "Host started: ").split("Host started: ")[1].split(" ")[0]
        replies: list[Response] = []
        release = tmp_path / "release"  # the function runs until this file exists
        path = urllib.parse.quote(str(release))
        caller = threading.Thread(
            target=lambda: replies.append(
                request("GET", f"{url}/api/slow?until={path}", timeout=60)
            )
        )
        caller.start()
        _wait_line(lines, "Executing 'Functions.slow'")
        process.send_signal(signal.SIGTERM)
        # Still in flight when the host starts draining, however slow the machine is.
        _wait_line(lines, "Waiting up to 10 s for 1 invocation(s) to finish.")
        release.touch()
        caller.join(60)
        assert replies, "the call in flight was never answered"
        assert (replies[0].status, replies[0].text) == (200, "released")
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(30)
    out = "".join(lines)
    assert "the host sent WorkerTerminate" in out
    assert "Host stopped." in out


def test_a_broken_worker_config_is_named_at_start_up(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"echo": http_function()})
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "worker.config.json").write_text('{"description": {"language": "x"}}')
    result = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"workerkit host: error: {worker / 'worker.config.json'}:"
        " description.defaultExecutablePath cannot be empty"
    )


def test_importing_workerkit_and_the_discovery_api_does_not_need_aiohttp() -> None:
    code = (
        "import sys, workerkit, workerkit.emulator, workerkit.__main__\n"
        "assert 'aiohttp' not in sys.modules, sorted(m for m in sys.modules if 'aiohttp' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_the_command_is_registered() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "--max-body-size" in result.stdout and "--worker" in result.stdout
    assert "--max-connections" in result.stdout


def _wait_line(lines: list[str], marker: str) -> str:
    return eventually(
        lambda: next((line for line in list(lines) if marker in line), ""),
        lambda: f"a line with {marker!r} in:\n{''.join(lines)}",
    )


# -- who may connect ----------------------------------------------------------------------------


def _command_line_of(needle: str) -> list[str]:
    """What any local process can read: the command line of the process running `needle`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode() for word in argv if word]
        if any(needle in word for word in words):
            return words
    return []


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="the check needs Linux's /proc")
def test_a_local_process_that_takes_the_worker_id_first_is_refused(tmp_path: Path) -> None:
    """The worker id is on the worker's command line: an impostor that connects before the
    worker must not get its stream (it used to receive every request, headers included)."""
    import asyncio

    from conftest import open_stream_as

    gate = tmp_path / "gate"
    script = tmp_path / "late_worker.py"
    worker_script = str(Path(__file__).resolve().parent / "emulator_worker.py")
    script.write_text(
        "import pathlib, runpy, sys, time\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "deadline = time.monotonic() + 60\n"
        "while not gate.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"sys.argv[0] = {worker_script!r}\n"
        f"runpy.run_path({worker_script!r}, run_name='__main__')\n"
    )
    app = write_app(tmp_path, {"echo": http_function()})
    worker = write_worker(tmp_path, description={"defaultWorkerPath": str(script)})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0))
    starting = threading.Thread(target=running.start, daemon=True)
    starting.start()
    argv = eventually(lambda: _command_line_of(str(script)), "the worker process appears")
    port = int(argv[argv.index("--port") + 1])
    worker_id = argv[argv.index("--workerId") + 1]

    try:
        assert (
            asyncio.run(asyncio.wait_for(open_stream_as(port, worker_id), 60)) == []
        )  # ended, nothing sent
        gate.write_text("go")
        starting.join(60)
        assert running.start_error is None, running.output
        reply = running.request("POST", "/api/echo", b"for the real worker")
        assert reply.status == 200, running.output
        assert f"refused a stream for worker {worker_id}" in running.output
        assert "Worker start failed" not in running.output  # the impostor disturbed nothing
    finally:
        gate.write_text("go")
        starting.join(60)
        running.stop()
