"""This worker's tests: worker.py started as the host starts it, its sample app loaded, the
functions called through `workerkit.testing`. Run them with ``python -m pytest tests`` here
(paths are relative to this file, so any working directory will do)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from workerkit import HttpRequest
from workerkit.testing import HostConnection, LoadResult, TestHost, binding, http_bindings

WORKER = Path(__file__).resolve().parent.parent  # worker.py, pyfunc.py, worker.config.json
APP = WORKER / "app"  # the sample function app


@asynccontextmanager
async def worker() -> AsyncIterator[HostConnection]:
    """worker.py in a process of its own, the app as its working directory, initialised;
    told to stop at the end, and checked to exit 0."""
    async with TestHost() as host:
        process = await host.spawn([sys.executable, str(WORKER / "worker.py")], cwd=APP)
        conn = process.connection
        assert conn is not None
        await conn.init(function_app_directory=str(APP), worker_directory=str(WORKER))
        yield conn
        await conn.terminate()
        assert await process.wait(30) == 0


async def load(
    conn: HostConnection, name: str, bindings: Mapping[str, Any], entry_point: str = ""
) -> LoadResult:
    """Load app/<name> as the host does from its function.json (the same bindings)."""
    script = json.loads((APP / name / "function.json").read_text())["scriptFile"]
    return await conn.load_function(
        name,
        bindings=bindings,
        script_file=str(APP / name / script),
        entry_point=entry_point,
        directory=str(APP / name),
    )


def test_hello_plain_def_returns_an_http_response() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            hello = await load(conn, "hello", http_bindings())
            request = HttpRequest("GET", "http://localhost/api/hello", query={"name": "Ada"})
            result = await conn.call(hello, {"req": request})
            assert result.ok, result.error
            assert result.http is not None
            assert (result.http.status_code, result.http.text()) == (200, "Hello, Ada!\n")
            assert [entry.message for entry in result.logs] == ["greeting Ada"]

            body = HttpRequest("POST", "http://localhost/api/hello", body=b'{"name": "Grace"}')
            assert (await conn.call(hello, {"req": body})).return_value.text() == "Hello, Grace!\n"

            nobody = await conn.call(
                hello, {"req": HttpRequest("GET", "http://localhost/api/hello")}
            )
            assert nobody.http is not None and nobody.http.status_code == 400

    asyncio.run(scenario())


def test_greet_async_def_sets_named_outputs() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            bindings = {
                "req": binding("httpTrigger"),
                "res": binding("http", "out"),
                "outbox": binding("queue", "out"),
            }
            greet = await load(conn, "greet", bindings, entry_point="greet")
            request = HttpRequest(
                "POST", "http://localhost/api/greet/fr", params={"lang": "fr"}, body=b"Ada"
            )
            result = await conn.call(greet, {"req": request})
            assert result.ok, result.error
            assert result.http is not None and result.http.status_code == 201
            assert result.http.json() == {"greeting": "Bonjour, Ada!"}
            assert result.outputs["outbox"] == "Bonjour, Ada!"

    asyncio.run(scenario())


def test_orders_queue_trigger_with_a_receipt_and_a_blob() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            bindings = {
                "msg": binding("queueTrigger"),
                "receipt": binding("queue", "out"),
                "$return": binding("blob", "out"),
            }
            orders = await load(conn, "orders", bindings)
            order = {"id": "o-1", "items": [{"price": 2.5, "quantity": 2}, {"price": 1}]}
            result = await conn.call(
                orders, {"msg": json.dumps(order)}, trigger_metadata={"DequeueCount": 2}
            )
            assert result.ok, result.error
            assert result.outputs == {"receipt": "order o-1: 6.00"}
            assert result.return_value == {**order, "total": 6}
            assert [entry.message for entry in result.logs] == [
                "order o-1: 2 items, total 6.00 (attempt 2)"
            ]

    asyncio.run(scenario())


def test_tick_timer_logs_the_next_run() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            tick = await load(conn, "tick", {"timer": binding("timerTrigger")})
            timer = {"IsPastDue": True, "ScheduleStatus": {"Next": "2026-01-01T00:05:00"}}
            result = await conn.call(tick, {"timer": timer})
            assert result.ok, result.error
            assert result.return_value is None
            assert [(entry.level, entry.message) for entry in result.logs] == [
                ("Warning", "tick is running late"),
                ("Information", "tick; next run at 2026-01-01T00:05:00"),
            ]

    asyncio.run(scenario())


def test_countdown_streams_server_sent_events() -> None:
    """Without WORKERKIT_HTTP_STREAMING the events are gathered into one body (with it, the
    worker's own HTTP server sends each as it comes: see the README)."""

    async def scenario() -> None:
        async with worker() as conn:
            countdown = await load(conn, "countdown", http_bindings())
            request = HttpRequest("GET", "http://localhost/api/countdown/3", params={"n": "3"})
            result = await conn.call(countdown, {"req": request})
            assert result.ok, result.error
            assert result.http is not None and result.http.status_code == 200
            assert result.http.headers["Content-Type"] == "text/event-stream"
            assert result.http.text() == "data: 3\n\ndata: 2\n\ndata: 1\n\n"

    asyncio.run(scenario())
