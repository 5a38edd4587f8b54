"""examples/python: classic Python functions, run as a real subprocess against TestHost."""

from __future__ import annotations

import json
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

from conftest import EXAMPLES, arun, eventually
from example_apps import (
    FAILURE,
    SUCCESS,
    emulator,
    function_id,
    http,
    load_app,
    log_messages,
    start,
)

from workerkit import HttpRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import decode_output
from workerkit.testing import TestHost, binding, http_bindings

APP = EXAMPLES / "python" / "app"
USER = pb.RpcLogRpcLogCategory.User


def test_the_sample_app_http_timer_queue_sync_async_and_named_outputs() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python")
            loads = await load_app(conn, APP)
            assert {name: r.result.status for name, r in loads.items()} == {
                "greet": SUCCESS, "hello": SUCCESS, "orders": SUCCESS, "tick": SUCCESS,
            }  # fmt: skip

            # HTTP, plain def, $return; the function's log line is attributed to the call.
            request = HttpRequest(
                "GET", "http://localhost/api/hello?name=Ada", query={"name": "Ada"}
            )
            reply = await conn.invoke(function_id("hello"), {"req": request})
            assert reply.result.status == SUCCESS
            response = decode_output(reply.return_value)
            assert (response.status_code, response.text()) == (200, "Hello, Ada!\n")
            logs = conn.logs_for(reply.invocation_id)
            assert [e.message for e in logs] == ["greeting Ada"]
            assert logs[0].log_category == USER

            missing = await conn.invoke(
                function_id("hello"), {"req": HttpRequest("GET", "http://x")}
            )
            assert decode_output(missing.return_value).status_code == 400

            # HTTP, async def, named outputs `res` (http) and `outbox` (queue), `context`.
            request = HttpRequest(
                "POST", "http://x/api/greet/fr", params={"lang": "fr"}, body=b"Ada"
            )
            reply = await conn.invoke(function_id("greet"), {"req": request})
            assert reply.result.status == SUCCESS, reply.result
            outputs = {b.name: decode_output(b.data) for b in reply.output_data}
            assert outputs["outbox"] == "Bonjour, Ada!"
            assert outputs["res"].status_code == 201
            assert outputs["res"].json() == {"greeting": "Bonjour, Ada!"}
            assert reply.return_value is None
            assert log_messages(conn, reply.invocation_id) == [
                f"greeting in fr for invocation {reply.invocation_id}"
            ]

            # Timer, async def: the host's JSON payload arrives as a dict.
            status = {"Last": "2026-01-01T00:00:00", "Next": "2026-01-01T00:05:00"}
            timer = {
                "Schedule": {"AdjustForDST": True},
                "IsPastDue": True,
                "ScheduleStatus": status,
            }
            reply = await conn.invoke(
                function_id("tick"), {"timer": pb.TypedData(json=json.dumps(timer))}
            )
            assert reply.result.status == SUCCESS
            assert log_messages(conn, reply.invocation_id) == [
                "tick is running late", "tick; next run at 2026-01-01T00:05:00",
            ]  # fmt: skip

            # Queue trigger, plain def: str message converted for a `dict` parameter; a named
            # output plus $return; trigger metadata through `context`.
            order = {"id": "o-1", "items": [{"price": 2.5, "quantity": 2}, {"price": 1.0}]}
            reply = await conn.invoke(
                function_id("orders"),
                {"msg": json.dumps(order)},
                trigger_metadata={"DequeueCount": pb.TypedData(json="2"), "Id": "m-1"},
            )
            assert reply.result.status == SUCCESS, reply.result
            assert [(b.name, decode_output(b.data)) for b in reply.output_data] == [
                ("receipt", "order o-1: 6.00")
            ]
            assert decode_output(reply.return_value) == {**order, "total": 6.0}
            assert log_messages(conn, reply.invocation_id) == [
                "order o-1: 2 items, total 6.00 (attempt 2)"
            ]

            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


BROKEN = """\
import json

import no_such_module_for_workerkit_tests  # line 3


def main(req):
    return None
"""


def test_import_errors_and_unbound_parameters_fail_the_load_with_a_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text(BROKEN)
    (tmp_path / "unbound").mkdir()
    (tmp_path / "unbound" / "__init__.py").write_text("def main(req, missing):\n    pass\n")
    (tmp_path / "fine").mkdir()
    (tmp_path / "fine" / "run.py").write_text(
        "import asyncio\n\nasync def main(req):\n    await asyncio.sleep(0)\n    return 'ok'\n"
    )

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "python", app=tmp_path)
            broken = await conn.load(
                "b", "broken", bindings=http_bindings(),
                script_file=str(tmp_path / "broken" / "__init__.py"),
            )  # fmt: skip
            assert broken.result.status == FAILURE
            message = broken.result.exception.message
            assert (
                "ModuleNotFoundError: No module named 'no_such_module_for_workerkit_tests'"
                in message
            )
            assert "Traceback (most recent call last):" in message
            assert f'File "{tmp_path / "broken" / "__init__.py"}", line 3, in <module>' in message
            assert "importlib" not in message
            invoked = await conn.invoke("b", {"req": HttpRequest("GET", "http://x")})
            assert invoked.result.status == FAILURE
            assert (
                "No module named 'no_such_module_for_workerkit_tests'"
                in invoked.result.exception.message
            )

            unbound = await conn.load(
                "u", "unbound", bindings=http_bindings(),
                script_file=str(tmp_path / "unbound" / "__init__.py"),
            )  # fmt: skip
            assert unbound.result.status == FAILURE
            assert (
                "parameter 'missing' of unbound matches no binding"
                in unbound.result.exception.message
            )

            # The other functions are unaffected; a script that is not __init__.py works too.
            bindings = {"req": binding("httpTrigger"), "$return": binding("http", "out")}
            fine = await conn.load(
                "f", "fine", bindings=bindings, script_file=str(tmp_path / "fine" / "run.py")
            )
            assert fine.result.status == SUCCESS
            reply = await conn.invoke("f", {"req": HttpRequest("GET", "http://x")})
            assert decode_output(reply.return_value) == "ok"

    arun(scenario())


FUNCTION_APP = """\
import logging

from pyfunc import FunctionApp, Out
from workerkit import HttpResponse

app = FunctionApp()


@app.route("hi/{who}", methods=("GET",))
def hi(req):
    logging.info("hi %s", req.params["who"])
    return HttpResponse(body="hi " + req.params["who"])


@app.output("copy", "queue", queueName="copies")
@app.queue_trigger("msg", queue_name="inbox")
async def relay(msg: str, copy: Out[str]) -> None:
    copy.set(msg.upper())
"""


def test_worker_indexing_with_decorators(tmp_path: Path) -> None:
    (tmp_path / "function_app.py").write_text(FUNCTION_APP)

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "python", app=tmp_path)
            found = await conn.functions_metadata(str(tmp_path))
            assert found.result.status == SUCCESS
            entries = {m.name: m for m in found.function_metadata_results}
            assert sorted(entries) == ["hi", "relay"]
            assert all(m.status is None for m in entries.values())
            raw = [json.loads(b) for b in entries["relay"].raw_bindings]
            assert [(b["name"], b["type"], b["direction"]) for b in raw] == [
                ("copy", "queue", "out"), ("msg", "queueTrigger", "in"),
            ]  # fmt: skip
            for meta in entries.values():
                bindings = {
                    b["name"]: binding(b["type"], b["direction"])
                    for b in map(json.loads, meta.raw_bindings)
                }
                loaded = await conn.load(
                    meta.function_id, meta.name, bindings=bindings, script_file=meta.script_file,
                    entry_point=meta.entry_point, directory=meta.directory,
                    properties=meta.properties,
                )  # fmt: skip
                assert loaded.result.status == SUCCESS, loaded.result
            request = HttpRequest("GET", "http://x/api/hi/bob", params={"who": "bob"})
            reply = await conn.invoke(entries["hi"].function_id, {"req": request})
            assert decode_output(reply.return_value).text() == "hi bob"
            assert log_messages(conn, reply.invocation_id) == ["hi bob"]
            reply = await conn.invoke(entries["relay"].function_id, {"msg": "psst"})
            assert [(b.name, decode_output(b.data)) for b in reply.output_data] == [
                ("copy", "PSST")
            ]

    arun(scenario())


def test_end_to_end_through_workerkit_host_with_real_http() -> None:
    with emulator(EXAMPLES / "python", APP) as url:
        assert http("GET", f"{url}/api/hello?name=Ada") == (200, b"Hello, Ada!\n")
        status, body = http("POST", f"{url}/api/greet/de", b"Ada")
        assert (status, json.loads(body)) == (201, {"greeting": "Hallo, Ada!"})


def test_the_console_shows_what_clients_send_with_control_characters_escaped() -> None:
    """Terminal escapes in a query logged by a function, or in a path the emulator warns
    about, reach the console as visible text: no retitling, clearing or forged lines."""
    evil = "\x1b]0;pwned\x07\x1b[2J\rExecuted 'Functions.x' (Succeeded)\u202e"
    quoted = urllib.parse.quote(evil, safe="")
    transcript: list[str] = []
    with emulator(EXAMPLES / "python", APP, transcript=transcript) as url:
        status, _ = http("GET", f"{url}/api/hello?name={quoted}")
        assert status == 200
        host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
        connection = HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", f"/api/greet/{quoted}")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"3\r\nAda\r\n0\r\n\r\n")
        connection.getresponse().read()
        connection.close()
        eventually(
            lambda: (
                any("greeting" in line for line in transcript)
                and any("without Content-Length" in line for line in transcript)
            ),
            lambda: "the greeting and the warning on the console:\n" + "".join(transcript),
        )
    printed = "".join(transcript)
    greeting = next(line for line in transcript if "greeting" in line)
    assert "greeting \\x1b]0;pwned\\x07\\x1b[2J\\x0dExecuted" in greeting
    assert "\\u202e" in greeting
    warning = next(line for line in transcript if "without Content-Length" in line)
    assert "/api/greet/\\x1b]0;pwned" in warning
    for control in ("\x1b", "\x07", "\r", "\u202e"):
        assert control not in printed
