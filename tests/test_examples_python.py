"""examples/python: classic Python functions, run as a real subprocess against TestHost."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

import pytest
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
from workerkit._hostside.proxy import HttpProxyClient, proxied_http_input
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
                "countdown": SUCCESS, "greet": SUCCESS, "hello": SUCCESS, "orders": SUCCESS,
                "tick": SUCCESS, "traced": SUCCESS,
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


# -- HTTP streaming (HttpUri, issue 15) ---------------------------------------------------------
STREAMING = {"WORKERKIT_HTTP_STREAMING": "true"}


def test_the_sample_app_through_the_hosts_proxy_with_a_countdown_line_by_line() -> None:
    """With the setting in its environment the example reports HttpUri; the host's part is
    played here: the InvocationRequest with the empty RpcHttp (route parameters only) and
    the request forwarded to HttpUri with x-ms-invocation-id, in either order."""

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python", env=STREAMING)
            capabilities = conn.replies("worker_init_response")[0].capabilities
            assert capabilities["HttpUri"].startswith("http://127.0.0.1:")
            assert capabilities["RequiresRouteParameters"] == "true"
            loads = await load_app(conn, APP)
            assert all(r.result.status == SUCCESS for r in loads.values())
            async with HttpProxyClient(capabilities["HttpUri"]) as proxy:
                # hello, the invocation first: the function's log is still attributed.
                pending = await conn.start_invocation(
                    function_id("hello"), {"req": proxied_http_input()}
                )
                response = await proxy.forward(pending.invocation_id, "GET", "/api/hello?name=Ada")
                assert (response.status, await response.read()) == (200, b"Hello, Ada!\n")
                assert response.header("content-type") == "text/plain"
                reply = await pending.result(30)
                assert reply.result.status == SUCCESS
                assert reply.return_value is None  # the response went over HTTP
                assert log_messages(conn, reply.invocation_id) == ["greeting Ada"]

                # hello, the request first, with a JSON body.
                invocation_id = "7b5c8f0e-0000-4000-8000-000000000001"
                forwarded = asyncio.ensure_future(
                    proxy.forward(invocation_id, "POST", "/api/hello", body=b'{"name": "Grace"}')
                )
                pending = await conn.start_invocation(
                    function_id("hello"), {"req": proxied_http_input()},
                    invocation_id=invocation_id,
                )  # fmt: skip
                response = await forwarded
                assert (response.status, await response.read()) == (200, b"Hello, Grace!\n")
                assert (await pending.result(30)).result.status == SUCCESS

                # countdown: each event is read before the next is expected.
                pending = await conn.start_invocation(
                    function_id("countdown"), {"req": proxied_http_input({"n": "5"})}
                )
                response = await proxy.forward(pending.invocation_id, "GET", "/api/countdown/5")
                assert response.status == 200
                assert response.header("content-type") == "text/event-stream"
                assert response.header("transfer-encoding") == "chunked"
                for k in range(5, 0, -1):
                    assert await response.readline() == f"data: {k}\n".encode()
                    assert await response.readline() == b"\n"
                assert await response.read() == b""
                assert (await pending.result(30)).result.status == SUCCESS

                # 50 calls of hello, 10 in flight, each answered with its own name.
                slots = asyncio.Semaphore(10)

                async def hello(index: int) -> bytes:
                    async with slots:
                        pending = await conn.start_invocation(
                            function_id("hello"), {"req": proxied_http_input()}
                        )
                        response = await proxy.forward(
                            pending.invocation_id, "GET", f"/api/hello?name=n{index}"
                        )
                        body = await response.read()
                        assert (await pending.result(30)).result.status == SUCCESS
                        return body

                bodies = await asyncio.gather(*(hello(i) for i in range(50)))
                assert bodies == [f"Hello, n{i}!\n".encode() for i in range(50)]
            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


def test_without_the_setting_the_countdown_is_gathered_into_one_body() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            env = {"WORKERKIT_HTTP_STREAMING": "false"}
            worker, conn = await start(host, "python", env=env)
            assert "HttpUri" not in conn.replies("worker_init_response")[0].capabilities
            await load_app(conn, APP)
            request = HttpRequest("GET", "http://x/api/countdown/3", params={"n": "3"})
            reply = await conn.invoke(function_id("countdown"), {"req": request})
            assert reply.result.status == SUCCESS, reply.result
            response = decode_output(reply.return_value)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.text() == "data: 3\n\ndata: 2\n\ndata: 1\n\n"
            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


def test_the_setting_without_aiohttp_fails_init_saying_what_to_install(tmp_path: Path) -> None:
    """A worker environment without aiohttp (an import of it fails, as when it is not
    installed): init fails with a message that names the setting and the extra."""
    (tmp_path / "aiohttp.py").write_text("raise ImportError('No module named aiohttp')\n")

    async def scenario() -> None:
        async with TestHost() as host:
            env = {**os.environ, **STREAMING, "PYTHONPATH": str(tmp_path)}
            worker = await host.spawn(
                [sys.executable, "-u", str(EXAMPLES / "python" / "worker.py")], cwd=APP, env=env
            )
            conn = worker.connection
            assert conn is not None
            init = await conn.init(
                function_app_directory=str(APP), worker_directory=str(EXAMPLES / "python")
            )
            assert init.result.status == FAILURE
            message = init.result.exception.message
            assert "WORKERKIT_HTTP_STREAMING" in message, message
            assert "workerkit[http]" in message, message
            await conn.terminate()
            await worker.wait(60)

    arun(scenario())


def test_the_countdown_streams_through_workerkit_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """With WORKERKIT_HTTP_STREAMING=true the example reports HttpUri and `workerkit host`
    forwards to it: /api/countdown/5 comes as a chunked stream (no Content-Length: not
    gathered into one body first), its events in order, and hello still answers."""
    monkeypatch.setenv("WORKERKIT_HTTP_STREAMING", "true")
    transcript: list[str] = []
    with emulator(EXAMPLES / "python", APP, transcript=transcript) as url:
        parts = urllib.parse.urlsplit(url)
        conn = HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        conn.request("GET", "/api/countdown/5")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type", "").startswith("text/event-stream")
        assert reply.getheader("Transfer-Encoding") == "chunked"
        assert reply.getheader("Content-Length") is None
        events = [reply.readline() for _ in range(10)]
        assert events == [
            line for k in range(5, 0, -1) for line in (f"data: {k}\n".encode(), b"\n")
        ]
        assert reply.read() == b""
        conn.close()
        assert http("GET", f"{url}/api/hello?name=Ada") == (200, b"Hello, Ada!\n")
    assert any("HttpUri" in line for line in transcript), transcript
