"""HTTP streaming through the host's proxy (``HttpUri``, issue 15), end to end: a real gRPC
TestHost that plays the host's proxy (it sends the InvocationRequest with the empty
RpcHttp and forwards the HTTP request itself to the worker's HttpUri with
``x-ms-invocation-id``), real HTTP on 127.0.0.1. Orders of arrival are forced by events
(what the worker's matcher holds), never by sleeping; the bounded waits use small bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import arun, until

import workerkit
from workerkit import HttpCookie, HttpRequest, HttpResponse, InvocationResult, WorkerOptions
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._hostside.proxy import HttpProxyClient, ProxiedResponse, proxied_http_input
from workerkit._runtime.proxymatch import State
from workerkit.testing import HostConnection, TestHost, binding, http_bindings

SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))
Hook = Callable[[workerkit.Invocation], Awaitable[Any]]
HERE = Path(__file__).resolve().parent


class Streaming(workerkit.Worker):
    """Runs `hooks[function name]` (an async callable) for each invocation."""

    def __init__(self, hooks: dict[str, Hook], **options: Any) -> None:
        super().__init__(options=WorkerOptions(http_streaming=True, **options))
        self.hooks = hooks

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        return await self.hooks[invocation.function.name](invocation)


class SyncStreaming(workerkit.Worker):
    """The same with a plain def hook (it runs in the thread pool)."""

    def __init__(self, hooks: dict[str, Callable[[workerkit.Invocation], Any]]) -> None:
        super().__init__(options=WorkerOptions(http_streaming=True))
        self.hooks = hooks

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        return self.hooks[invocation.function.name](invocation)


class Served:
    """A worker served in this loop, with its host connection and the host's proxy."""

    def __init__(self, conn: HostConnection, worker: workerkit.Worker, proxy: HttpProxyClient):
        self.conn = conn
        self.worker = worker
        self.proxy = proxy
        self.ids: dict[str, str] = {}

    @property
    def matcher(self) -> Any:
        session = self.worker._restart.__self__  # type: ignore[union-attr]
        return session.proxy.matcher

    async def load(self, name: str, bindings: dict[str, pb.BindingInfo] | None = None) -> str:
        loaded = await self.conn.load_function(name, bindings=bindings or http_bindings())
        self.ids[name] = loaded.function_id
        return loaded.function_id

    async def invoke(self, name: str, params: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return await self.conn.start_invocation(
            self.ids[name], {"req": proxied_http_input(params)}, **kwargs
        )

    async def call(
        self,
        name: str,
        path: str,
        *,
        method: str = "GET",
        params: dict[str, str] | None = None,
        **forward: Any,
    ) -> tuple[ProxiedResponse, pb.InvocationResponse]:
        """A proxied call, the request first; the response with its body read."""
        pending = await self.invoke(name, params)
        response = await self.proxy.forward(pending.invocation_id, method, path, **forward)
        await response.read()
        return response, await pending.result(30)


@contextlib.asynccontextmanager
async def serving(worker: workerkit.Worker) -> AsyncIterator[Served]:
    async with TestHost() as host:
        started = await host.start_worker(worker)
        init = await started.connection.init()
        assert init.result.status == SUCCESS
        uri = init.capabilities["HttpUri"]
        async with HttpProxyClient(uri) as proxy:
            yield Served(started.connection, worker, proxy)


async def echo(invocation: workerkit.Invocation) -> HttpResponse:
    request: HttpRequest = invocation.inputs["req"]
    return HttpResponse.from_json(
        {
            "invocation": invocation.invocation_id,
            "method": request.method,
            "url": request.url,
            "query": dict(request.query),
            "params": dict(request.params),
            "header": request.headers.get("x-test"),
            "body": request.body.decode(),
        }
    )


# -- capabilities and the setting --------------------------------------------------------------
def test_the_worker_reports_its_server_and_asks_for_route_parameters() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            messages = served.conn.replies("worker_init_response")
            capabilities = messages[0].capabilities
            assert capabilities["HttpUri"].startswith("http://127.0.0.1:")
            assert capabilities["HttpUri"].rsplit(":", 1)[1].isdigit()  # no path: YARP adds it
            assert capabilities["RequiresRouteParameters"] == "true"

    arun(scenario())


SETTING_WORKER = HERE / "http_worker.py"


@pytest.mark.parametrize(
    ("setting", "on"), [(None, False), ("false", False), ("maybe", False), ("true", True)]
)
def test_the_app_setting_turns_it_on_and_nothing_is_started_without_it(
    setting: str | None, on: bool
) -> None:
    """A worker process under the host's environment: without the setting there is no
    HttpUri, no server and no aiohttp in the process; with it, proxied calls work."""

    async def scenario() -> None:
        env = {k: v for k, v in os.environ.items() if k != "WORKERKIT_HTTP_STREAMING"}
        if setting is not None:
            env["WORKERKIT_HTTP_STREAMING"] = setting
        async with TestHost() as host:
            worker = await host.spawn([sys.executable, str(SETTING_WORKER)], env=env)
            conn = worker.connection
            init = await conn.init()
            assert ("HttpUri" in init.capabilities) is on
            assert ("RequiresRouteParameters" in init.capabilities) is on
            probe = await conn.load_function("probe", bindings=http_bindings())
            if on:
                async with HttpProxyClient(init.capabilities["HttpUri"]) as proxy:
                    pending = await conn.start_invocation(
                        probe.function_id, {"req": proxied_http_input()}
                    )
                    response = await proxy.forward(pending.invocation_id, "GET", "/api/probe")
                    state = json.loads(await response.read())
                    assert (await pending).result.status == SUCCESS
            else:
                request = HttpRequest("GET", "http://localhost/api/probe")
                result = await conn.call(probe, {"req": request})
                assert result.http is not None
                state = result.http.json()
                if setting == "maybe":
                    warned = "WORKERKIT_HTTP_STREAMING='maybe' is neither true nor false"
                    assert any(warned in log.message for log in conn.logs)
            assert state["aiohttp_loaded"] is on
            assert state["listening_sockets"] == (1 if on else 0)
            await conn.terminate()
            assert await worker.wait(10) == 0

    arun(scenario())


def test_the_setting_may_come_with_the_environment_reload() -> None:
    """A placeholder worker started without the setting turns streaming on when the
    reloaded environment has it (merged into the host's capabilities)."""

    async def scenario() -> None:
        async with TestHost() as host:
            env = {k: v for k, v in os.environ.items() if k != "WORKERKIT_HTTP_STREAMING"}
            worker = await host.spawn([sys.executable, str(SETTING_WORKER)], env=env)
            conn = worker.connection
            init = await conn.init()
            assert "HttpUri" not in init.capabilities
            environment = {**os.environ, "WORKERKIT_HTTP_STREAMING": "true"}
            reload = await conn.reload_environment(environment, os.getcwd())
            assert reload.result.status == SUCCESS
            assert reload.capabilities_update_strategy == 0  # merge: the init ones stay
            uri = reload.capabilities["HttpUri"]
            assert reload.capabilities["RequiresRouteParameters"] == "true"
            probe = await conn.load_function("probe", bindings=http_bindings())
            async with HttpProxyClient(uri) as proxy:
                pending = await conn.start_invocation(
                    probe.function_id, {"req": proxied_http_input()}
                )
                response = await proxy.forward(pending.invocation_id, "GET", "/api/probe")
                assert json.loads(await response.read())["aiohttp_loaded"] is True
                assert (await pending).result.status == SUCCESS
            await conn.terminate()
            assert await worker.wait(10) == 0

    arun(scenario())


# -- matching ---------------------------------------------------------------------------------
def test_request_first_then_invocation() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            await served.load("echo")
            invocation_id = "11111111-0000-0000-0000-000000000001"
            forwarding = asyncio.create_task(
                served.proxy.forward(
                    invocation_id,
                    "POST",
                    "/api/echo/7?name=Ada&name=Bo&empty=",
                    headers={"X-Test": "yes", "Host": "example.org"},
                    body=b"hello",
                    scheme="https",
                )
            )
            await until(lambda: served.matcher.state(invocation_id) is State.REQUEST_WAITS)
            pending = await served.invoke("echo", {"id": "7"}, invocation_id=invocation_id)
            response = await forwarding
            seen = json.loads(await response.read())
            assert response.status == 200
            assert seen == {
                "invocation": invocation_id,
                "method": "POST",
                "url": "https://example.org/api/echo/7?name=Ada&name=Bo&empty=",
                "query": {"name": "Ada,Bo", "empty": ""},
                "params": {"id": "7"},
                "header": "yes",
                "body": "hello",
            }
            reply = await pending.result(30)
            assert reply.result.status == SUCCESS
            assert reply.return_value is None and reply.output_data == []  # status only

    arun(scenario())


def test_invocation_first_then_request() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            await served.load("echo")
            pending = await served.invoke("echo", {"id": "9"})
            await until(
                lambda: served.matcher.state(pending.invocation_id) is State.INVOCATION_WAITS
            )
            response = await served.proxy.forward(pending.invocation_id, "GET", "/api/echo/9")
            seen = json.loads(await response.read())
            assert seen["invocation"] == pending.invocation_id
            assert seen["params"] == {"id": "9"} and seen["body"] == ""
            assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


def test_fifty_calls_ten_in_flight_each_get_their_own_request() -> None:
    """50 calls, 10 at a time, each in a random order of request and invocation; every
    response carries its own invocation's id and body, and every invocation succeeds."""

    async def scenario() -> None:
        rng = random.Random(15)
        async with serving(Streaming({"echo": echo})) as served:
            await served.load("echo")
            slots = asyncio.Semaphore(10)

            async def one(number: int) -> None:
                async with slots:
                    invocation_id = f"00000000-0000-0000-0000-{number:012d}"
                    body = f"call {number}".encode()
                    if rng.random() < 0.5:
                        forwarding = asyncio.create_task(
                            served.proxy.forward(invocation_id, "POST", "/api/echo", body=body)
                        )
                        await asyncio.sleep(0)
                        pending = await served.invoke("echo", invocation_id=invocation_id)
                    else:
                        pending = await served.invoke("echo", invocation_id=invocation_id)
                        forwarding = asyncio.create_task(
                            served.proxy.forward(invocation_id, "POST", "/api/echo", body=body)
                        )
                    response = await forwarding
                    seen = json.loads(await response.read())
                    assert seen["invocation"] == invocation_id
                    assert seen["body"] == body.decode()
                    assert (await pending.result(30)).result.status == SUCCESS

            await asyncio.gather(*(one(n) for n in range(50)))
            answers = served.conn.replies("invocation_response")
            assert len(answers) == len({a.invocation_id for a in answers}) == 50

    arun(scenario(), timeout=120)


def test_a_call_that_comes_while_its_function_loads_waits_for_the_load() -> None:
    """Whether a call is proxied is decided once its function is loaded."""

    class SlowLoad(Streaming):
        async def on_function_load(self, function: workerkit.FunctionInfo) -> None:  # type: ignore[override]
            await self.loaded.wait()

    async def scenario() -> None:
        worker = SlowLoad({"echo": echo})
        worker.loaded = asyncio.Event()  # type: ignore[attr-defined]
        async with serving(worker) as served:
            request = served.conn.load_request("id-echo", "echo", bindings=http_bindings())
            loading = asyncio.create_task(served.conn.send_load(request))
            served.ids["echo"] = "id-echo"
            session = worker._restart.__self__  # type: ignore[union-attr]
            await until(lambda: "id-echo" in session._loading)  # the load is under way
            pending = await served.invoke("echo", {"id": "1"})
            response_task = asyncio.create_task(
                served.proxy.forward(pending.invocation_id, "GET", "/api/echo/1")
            )
            await until(lambda: served.matcher.state(pending.invocation_id) is State.REQUEST_WAITS)
            worker.loaded.set()  # type: ignore[attr-defined]
            assert (await loading).result.status == SUCCESS
            response = await response_task
            assert json.loads(await response.read())["params"] == {"id": "1"}
            assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


def test_a_request_does_not_time_out_while_the_worker_holds_its_invocation_unread() -> None:
    """With its backlog full the worker stops reading from the host; a request whose
    invocation is stuck behind that does not count that time (here longer than the bound)
    and is served once the backlog drains."""

    async def scenario() -> None:
        release = asyncio.Event()

        async def held(invocation: workerkit.Invocation) -> HttpResponse:
            await release.wait()
            return HttpResponse(body=invocation.invocation_id)

        worker = Streaming({"held": held}, http_match_timeout=0.3, max_in_flight=1, max_queued=1)
        async with serving(worker) as served:
            await served.load("held")
            calls = []
            for _ in range(3):
                pending = await served.invoke("held")
                forwarding = asyncio.create_task(
                    served.proxy.forward(pending.invocation_id, "GET", "/api/held")
                )
                calls.append((pending, forwarding))
            third = calls[2][0].invocation_id
            await until(lambda: served.matcher.state(third) is State.REQUEST_WAITS)
            assert served.matcher.paused  # two invocations fill the backlog
            await asyncio.sleep(0.6)  # lets twice the bound pass while not reading
            assert served.matcher.state(third) is State.REQUEST_WAITS
            release.set()
            for pending, forwarding in calls:
                response = await forwarding
                assert await response.read() == pending.invocation_id.encode()
                assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


# -- streaming both ways ------------------------------------------------------------------------
def test_a_streamed_response_arrives_chunk_by_chunk() -> None:
    """The hook produces event k+1 only after the test has read event k: if anything on the
    way buffered the response, this would never finish."""

    async def scenario() -> None:
        read = [asyncio.Event() for _ in range(5)]

        async def events(invocation: workerkit.Invocation) -> HttpResponse:
            async def lines() -> AsyncIterator[str]:
                for k in range(5):
                    if k:
                        await read[k - 1].wait()
                    yield f"data: {k}\n\n"

            return HttpResponse(body=lines(), headers={"Content-Type": "text/event-stream"})

        async with serving(Streaming({"events": events})) as served:
            await served.load("events")
            pending = await served.invoke("events")
            response = await served.proxy.forward(pending.invocation_id, "GET", "/api/events")
            assert response.status == 200
            assert response.header("content-type") == "text/event-stream"
            assert response.header("transfer-encoding") == "chunked"
            for k in range(5):
                assert await response.readline() == f"data: {k}\n".encode()
                assert await response.readline() == b"\n"
                read[k].set()
            assert await response.read() == b""
            assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


def test_a_large_request_body_is_read_without_holding_it() -> None:
    """64 MiB sent in 64 KiB chunks; the hook counts them as they come. No chunk it gets is
    large, the body is never held whole (`body` refuses), and the sender is held back while
    the hook pauses (flow control): it never gets far ahead of what the hook has read."""

    async def scenario() -> None:
        size, piece = 64 * 1024 * 1024, 64 * 1024
        sent = consumed = ahead = 0
        paused = asyncio.Event()
        biggest = 0

        async def count(invocation: workerkit.Invocation) -> HttpResponse:
            nonlocal consumed, biggest
            request: HttpRequest = invocation.inputs["req"]
            with pytest.raises(RuntimeError, match=r"await request.read\(\)"):
                request.body  # noqa: B018 - streamed: not read yet
            async for chunk in request.stream():
                consumed += len(chunk)
                biggest = max(biggest, len(chunk))
                if consumed >= 4 * 1024 * 1024 and not paused.is_set():
                    # Give a sender without flow control every chance to run ahead.
                    for _ in range(100):
                        if running_ahead():
                            break
                        await asyncio.sleep(0.01)
                    paused.set()
            with pytest.raises(RuntimeError, match=r"consumed by request\.stream"):
                await request.read()
            return HttpResponse(body=str(consumed))

        def running_ahead() -> bool:
            return sent - consumed > 48 << 20

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent, ahead
            block = b"x" * piece
            while sent < size:
                ahead = max(ahead, sent - consumed)
                sent += piece
                yield block

        async with serving(Streaming({"count": count})) as served:
            await served.load("count")
            pending = await served.invoke("count")
            response = await served.proxy.forward(
                pending.invocation_id, "POST", "/api/count", body=chunks()
            )
            assert await response.read() == str(size).encode()
            assert (await pending.result(60)).result.status == SUCCESS
        assert consumed == size
        assert biggest <= 1024 * 1024
        assert paused.is_set()
        assert ahead <= 16 * 1024 * 1024, f"the sender ran {ahead} bytes ahead"

    arun(scenario(), timeout=120)


def test_bodies_a_hook_reads_whole_work_as_without_streaming() -> None:
    """Non-streaming hooks work unchanged: a small body is read before the hook (`body`
    works in async def), a plain def hook reads any body with `body` or `for ... in
    stream()`, `await read()` works everywhere, and a returned HttpResponse is written with
    its status, headers and cookies."""

    async def small(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        return HttpResponse(
            status_code=201,
            body=request.body.upper(),
            headers={"X-Seen": str(len(request.body))},
            cookies=[HttpCookie("session", "a b", http_only=True)],
        )

    async def big(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        with pytest.raises(RuntimeError, match="Content-Length 2097152, more than"):
            request.body  # noqa: B018
        data = await request.read()
        assert request.body is data  # kept
        return HttpResponse(body=str(len(data)))

    def whole(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        return HttpResponse(body=str(len(request.body)))  # waits in this thread

    def pieces(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        sizes = [len(chunk) for chunk in request.stream()]
        return HttpResponse(body=str(sum(sizes)))

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 100_000

    async def scenario() -> None:
        async with serving(Streaming({"small": small, "big": big})) as served:
            for name in ("small", "big"):
                await served.load(name)
            response, reply = await served.call("small", "/api/small", method="POST", body=b"hi")
            assert reply.result.status == SUCCESS
            assert response.status == 201
            assert await response.read() == b"HI"
            assert response.header("x-seen") == "2"
            assert response.header("content-type") == "application/octet-stream"
            assert ("Set-Cookie", "session=a%20b; path=/; httponly") in response.headers
            response, reply = await served.call(
                "big", "/api/big", method="POST", body=b"z" * (2 << 20)
            )
            assert reply.result.status == SUCCESS, reply.result
            assert await response.read() == str(2 << 20).encode()
        async with serving(SyncStreaming({"whole": whole, "pieces": pieces})) as served:
            for name in ("whole", "pieces"):
                await served.load(name)
            for name in ("whole", "pieces"):
                for body in (b"z" * (3 << 20), chunked()):
                    response, reply = await served.call(name, "/api/x", method="PUT", body=body)
                    assert reply.result.status == SUCCESS, reply.result
                    assert int(await response.read()) in (3 << 20, 400_000)

    arun(scenario())


def test_other_outputs_still_go_in_the_invocation_response() -> None:
    async def with_queue(invocation: workerkit.Invocation) -> InvocationResult:
        return InvocationResult(outputs={"res": HttpResponse(body="ok"), "out": "queued"})

    async def scenario() -> None:
        bindings = {
            "req": binding("httpTrigger"),
            "res": binding("http", "out"),
            "out": binding("queue", "out"),
        }
        async with serving(Streaming({"queue": with_queue})) as served:
            await served.load("queue", bindings)
            response, reply = await served.call("queue", "/api/queue")
            assert await response.read() == b"ok"
            assert reply.result.status == SUCCESS
            assert [(o.name, o.data.string) for o in reply.output_data] == [("out", "queued")]
            assert reply.return_value is None

    arun(scenario())


def test_values_other_than_http_response_and_no_value() -> None:
    async def nothing(invocation: workerkit.Invocation) -> None:
        return None

    async def text(invocation: workerkit.Invocation) -> str:
        return "plain"

    async def data(invocation: workerkit.Invocation) -> dict[str, int]:
        return {"n": 1}

    async def scenario() -> None:
        async with serving(Streaming({"nothing": nothing, "text": text, "data": data})) as served:
            for name in ("nothing", "text", "data"):
                await served.load(name)
            response, reply = await served.call("nothing", "/api/nothing")
            assert (response.status, reply.result.status) == (204, SUCCESS)
            response, _ = await served.call("text", "/api/text")
            assert response.header("content-type") == "text/plain; charset=utf-8"
            assert await response.read() == b"plain"
            response, _ = await served.call("data", "/api/data")
            assert response.header("content-type") == "application/json; charset=utf-8"
            assert json.loads(await response.read()) == {"n": 1}

    arun(scenario())


def test_head_204_and_304_have_no_body_and_keep_the_connection_usable() -> None:
    """HEAD (with the Content-Length a GET would have), 204 and 304 go without a body even
    when the function gave one, so a kept-alive connection stays in step; Expect:
    100-continue is answered before the body is read."""

    async def status(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        data = await request.read()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"never sent"

        code = int(request.query.get("s", "200"))
        return HttpResponse(status_code=code, body=chunks() if data else b"abc")

    async def scenario() -> None:
        async with serving(Streaming({"status": status})) as served:
            await served.load("status")
            host, port = served.proxy.http_uri.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            heads = []
            for method, query, extra in (
                ("HEAD", "", ""),
                ("GET", "?s=204", ""),
                ("POST", "?s=304", "Expect: 100-continue\r\nContent-Length: 1\r\n"),
                ("HEAD", "", "Content-Length: 1\r\n"),  # a streamed body: none on HEAD
                ("GET", "", ""),
            ):
                pending = await served.invoke("status")
                writer.write(
                    f"{method} /api/status{query} HTTP/1.1\r\nHost: h\r\n"
                    f"x-ms-invocation-id: {pending.invocation_id}\r\n{extra}\r\n".encode()
                )
                if "100-continue" in extra:
                    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
                if "Content-Length: 1" in extra:
                    writer.write(b"x")
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                heads.append(head)
                assert (await pending.result(30)).result.status == SUCCESS
            assert await reader.readexactly(3) == b"abc"  # the last GET's body, and only it
            writer.close()
            assert heads[0].startswith("HTTP/1.1 200") and "Content-Length: 3" in heads[0]
            assert heads[1].startswith("HTTP/1.1 204") and "Content-Length" not in heads[1]
            assert heads[2].startswith("HTTP/1.1 304")
            assert heads[3].startswith("HTTP/1.1 200") and "chunked" not in heads[3]
            assert heads[4].startswith("HTTP/1.1 200") and "Content-Length: 3" in heads[4]

    arun(scenario())


# -- the bounded waits -------------------------------------------------------------------------
def test_a_request_whose_invocation_never_comes_is_answered_504() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo}, http_match_timeout=0.3)) as served:
            await served.load("echo")
            invocation_id = "22222222-0000-0000-0000-000000000002"
            response = await served.proxy.forward(invocation_id, "GET", "/api/echo")
            assert response.status == 504
            text = (await response.read()).decode()
            assert f"no invocation {invocation_id} reached the worker within 0.3 s" in text
            # The invocation, when it comes after all, fails at once with the reason.
            pending = await served.invoke("echo", invocation_id=invocation_id)
            reply = await pending.result(30)
            assert reply.result.status == FAILURE
            assert "answered 504" in reply.result.exception.message

    arun(scenario())


def test_an_invocation_whose_request_never_comes_fails() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo}, http_match_timeout=0.3)) as served:
            await served.load("echo")
            pending = await served.invoke("echo")
            reply = await pending.result(30)
            assert reply.result.status == FAILURE
            message = reply.result.exception.message
            assert "did not reach the worker within 0.3 s" in message
            assert "x-ms-invocation-id" in message
            late = await served.proxy.forward(pending.invocation_id, "GET", "/api/echo")
            assert late.status == 504  # at once, not after another wait

    arun(scenario())


def test_a_request_without_the_header_is_refused() -> None:
    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            response = await served.proxy.forward("", "GET", "/api/echo")  # no id: no header
            assert response.status == 400
            assert "x-ms-invocation-id" in (await response.read()).decode()

    arun(scenario())


# -- cancel, errors, disconnects ---------------------------------------------------------------
def test_cancel_before_and_while_streaming() -> None:
    async def scenario() -> None:
        started = asyncio.Event()
        stopped: list[str] = []

        async def slow(invocation: workerkit.Invocation) -> HttpResponse:
            started.set()
            await asyncio.Event().wait()  # until cancelled
            raise AssertionError("not cancelled")

        async def endless(invocation: workerkit.Invocation) -> HttpResponse:
            async def lines() -> AsyncIterator[bytes]:
                try:
                    while True:
                        yield b"tick\n"
                        await asyncio.sleep(0.01)
                finally:
                    stopped.append(invocation.invocation_id)

            return HttpResponse(body=lines())

        async with serving(Streaming({"slow": slow, "endless": endless})) as served:
            await served.load("slow")
            await served.load("endless")
            # Cancelled while the hook runs: 500 (as the host answers), then Cancelled.
            pending = await served.invoke("slow")
            forwarding = asyncio.create_task(
                served.proxy.forward(pending.invocation_id, "GET", "/api/slow")
            )
            await started.wait()
            await served.conn.cancel(pending.invocation_id)
            assert (await pending.result(30)).result.status == CANCELLED
            assert (await forwarding).status == 500
            # Cancelled mid-stream: the response is cut off, not ended cleanly.
            pending = await served.invoke("endless")
            response = await served.proxy.forward(pending.invocation_id, "GET", "/api/endless")
            assert await response.readline() == b"tick\n"
            await served.conn.cancel(pending.invocation_id)
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
            assert (await pending.result(30)).result.status == CANCELLED
            assert stopped == [pending.invocation_id]
            # Cancelled while waiting for its request: a late request gets 500 at once.
            pending = await served.invoke("slow")
            await until(
                lambda: served.matcher.state(pending.invocation_id) is State.INVOCATION_WAITS
            )
            await served.conn.cancel(pending.invocation_id)
            assert (await pending.result(30)).result.status == CANCELLED
            late = await served.proxy.forward(pending.invocation_id, "GET", "/api/slow")
            assert late.status == 500

    arun(scenario())


def test_a_hook_that_raises_before_or_while_streaming() -> None:
    async def fails(invocation: workerkit.Invocation) -> HttpResponse:
        raise ValueError("no such item")

    async def fails_later(invocation: workerkit.Invocation) -> HttpResponse:
        async def lines() -> AsyncIterator[bytes]:
            yield b"first\n"
            raise RuntimeError("the model went away")

        return HttpResponse(body=lines())

    async def scenario() -> None:
        async with serving(Streaming({"fails": fails, "later": fails_later})) as served:
            await served.load("fails")
            await served.load("later")
            response, reply = await served.call("fails", "/api/fails")
            assert response.status == 500
            assert await response.read() == b""  # nothing of the error reaches the client
            assert reply.result.status == FAILURE
            assert "no such item" in reply.result.exception.message
            pending = await served.invoke("later")
            response = await served.proxy.forward(pending.invocation_id, "GET", "/api/later")
            assert response.status == 200
            assert await response.readline() == b"first\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
            reply = await pending.result(30)
            assert reply.result.status == FAILURE
            assert "the model went away" in reply.result.exception.message

    arun(scenario())


def test_a_client_that_goes_away_mid_response_stops_the_stream() -> None:
    """The client drops the connection while the body streams; the hook's generator is
    stopped (its finally runs), the invocation is answered, and nothing is left running."""

    async def scenario() -> None:
        finished: list[str] = []

        async def endless(invocation: workerkit.Invocation) -> HttpResponse:
            async def lines() -> AsyncIterator[bytes]:
                try:
                    while True:
                        yield b"tick\n"
                        await asyncio.sleep(0.01)
                finally:
                    finished.append("closed")

            return HttpResponse(body=lines())

        async with serving(Streaming({"endless": endless})) as served:
            await served.load("endless")
            pending = await served.invoke("endless")
            response = await served.proxy.forward(pending.invocation_id, "GET", "/api/endless")
            assert await response.readline() == b"tick\n"
            response.close()
            reply = await pending.result(30)
            assert reply.result.status in (CANCELLED, FAILURE)
            await until(lambda: finished == ["closed"])
            session = served.worker._restart.__self__  # type: ignore[union-attr]
            await until(lambda: not session.invocations.tasks)
            assert len(served.matcher) == 0

    arun(scenario())


def test_a_hook_that_swallows_the_cancel_does_not_hold_its_request() -> None:
    """An async def that ignores cancellation is answered Cancelled after the grace period
    (as without streaming); its HTTP request is answered then too, not when it returns."""

    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def stubborn(invocation: workerkit.Invocation) -> HttpResponse:
            started.set()
            while not release.is_set():
                try:
                    await release.wait()
                except BaseException:  # swallows the cancel, on purpose
                    pass
            return HttpResponse(body="too late")

        async with serving(Streaming({"stubborn": stubborn})) as served:
            await served.load("stubborn")
            pending = await served.invoke("stubborn")
            forwarding = asyncio.create_task(
                served.proxy.forward(pending.invocation_id, "GET", "/api/stubborn")
            )
            try:
                await started.wait()
                await served.conn.cancel(pending.invocation_id)
                assert (await pending.result(30)).result.status == CANCELLED
                assert (await asyncio.wait_for(forwarding, 30)).status == 500
            finally:
                release.set()  # let it end, so the test can

    arun(scenario())


def test_a_client_that_goes_away_before_the_response_cancels_the_hook() -> None:
    async def scenario() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def slow(invocation: workerkit.Invocation) -> HttpResponse:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("not cancelled")

        async with serving(Streaming({"slow": slow})) as served:
            await served.load("slow")
            pending = await served.invoke("slow")
            forwarding = asyncio.create_task(
                served.proxy.forward(pending.invocation_id, "GET", "/api/slow")
            )
            await started.wait()
            forwarding.cancel()  # the client gives up: its connection closes
            await cancelled.wait()
            assert (await pending.result(30)).result.status == CANCELLED

    arun(scenario())


def test_terminate_drains_a_stream_and_answers_a_waiting_request() -> None:
    """WorkerTerminate: a response under way is finished within the grace period, a request
    whose invocation never came is answered 503, and the worker exits 0."""

    async def scenario() -> None:
        go = asyncio.Event()

        async def tail(invocation: workerkit.Invocation) -> HttpResponse:
            async def lines() -> AsyncIterator[bytes]:
                yield b"one\n"
                await go.wait()
                yield b"two\n"

            return HttpResponse(body=lines())

        async with TestHost() as host:
            worker = Streaming({"tail": tail})
            started = await host.start_worker(worker)
            conn = started.connection
            init = await conn.init()
            async with HttpProxyClient(init.capabilities["HttpUri"]) as proxy:
                function = await conn.load_function("tail", bindings=http_bindings())
                pending = await conn.start_invocation(
                    function.function_id, {"req": proxied_http_input()}
                )
                streaming = await proxy.forward(pending.invocation_id, "GET", "/api/tail")
                assert await streaming.readline() == b"one\n"
                orphan = asyncio.create_task(proxy.forward("no-such-invocation", "GET", "/x"))
                session = worker._restart.__self__  # type: ignore[union-attr]
                await until(lambda: session.proxy.matcher.state("no-such-invocation"))
                await conn.terminate(grace_period=10)
                go.set()
                assert await streaming.read() == b"two\n"
                assert (await pending.result(30)).result.status == SUCCESS
                assert (await orphan).status == 503
                assert await started.wait(30) == 0

    arun(scenario())


# -- without the proxy ---------------------------------------------------------------------------
def test_a_streamed_body_is_gathered_when_streaming_is_off() -> None:
    """The same hook without the proxy: the chunks are gathered and sent as one body (plain
    iterators too), and a body past the host's message size fails the invocation."""

    async def stream(invocation: workerkit.Invocation) -> HttpResponse:
        async def lines() -> AsyncIterator[str]:
            for k in range(3):
                yield f"line {k}\n"

        return HttpResponse(body=lines(), headers={"content-type": "text/plain"})

    async def plain(invocation: workerkit.Invocation) -> HttpResponse:
        return HttpResponse(body=iter([b"a", "b", b"c"]))

    async def huge(invocation: workerkit.Invocation) -> HttpResponse:
        async def blocks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65536

        return HttpResponse(body=blocks())

    class Off(Streaming):
        def __init__(self) -> None:
            workerkit.Worker.__init__(self, options=WorkerOptions(http_streaming=False))
            self.hooks = {"stream": stream, "plain": plain, "huge": huge}

    async def scenario() -> None:
        async with TestHost(max_message_length=1 << 20) as host:
            started = await host.start_worker(Off())
            conn = started.connection
            init = await conn.init()
            assert "HttpUri" not in init.capabilities
            request = HttpRequest("GET", "http://localhost/api/x")
            for name, expected in (("stream", "line 0\nline 1\nline 2\n"), ("plain", "abc")):
                loaded = await conn.load_function(name, bindings=http_bindings())
                result = await conn.call(loaded, {"req": request})
                assert result.ok, result.error
                assert result.http is not None and result.http.text() == expected
            loaded = await conn.load_function("huge", bindings=http_bindings())
            result = await conn.call(loaded, {"req": request})
            assert result.status == "failure"
            assert "grew past 1048576 bytes" in (result.error or "")

    arun(scenario())


def test_a_host_that_sends_the_whole_request_is_answered_the_usual_way() -> None:
    """With streaming on, an invocation whose RpcHttp carries the request (a host that does
    not proxy) runs from the RpcHttp, as without streaming."""

    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            loaded = await served.conn.load_function("echo", bindings=http_bindings())
            request = HttpRequest("POST", "http://localhost/api/echo", body=b"inline")
            result = await served.conn.call(loaded, {"req": request})
            assert result.ok and result.http is not None
            assert result.http.json()["body"] == "inline"

    arun(scenario())


def test_a_plain_def_hook_cancelled_while_its_thread_reads_the_body() -> None:
    """A plain def hook waiting in its thread for a body that does not come is answered
    Cancelled at once; its thread is released when the request ends (not left blocked)."""

    async def scenario() -> None:
        released = threading.Event()
        entered = threading.Event()

        def waits(invocation: workerkit.Invocation) -> HttpResponse:
            entered.set()
            try:
                invocation.inputs["req"].body  # noqa: B018 - blocks: the body never ends
            except BaseException:
                released.set()
                raise
            return HttpResponse()

        async def trickle() -> AsyncIterator[bytes]:
            yield b"a"
            await asyncio.Event().wait()

        async with serving(SyncStreaming({"waits": waits})) as served:
            await served.load("waits")
            pending = await served.invoke("waits")
            forwarding = asyncio.create_task(
                served.proxy.forward(pending.invocation_id, "POST", "/api/w", body=trickle())
            )
            await until(entered.is_set)
            await served.conn.cancel(pending.invocation_id)
            assert (await pending.result(30)).result.status == CANCELLED
            await until(released.is_set)
            forwarding.cancel()

    arun(scenario())
