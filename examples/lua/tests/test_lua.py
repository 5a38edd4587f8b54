"""This worker's tests: worker.py started as the host starts it, its sample app loaded, the
functions called through `workerkit.testing`. Run them with ``python -m pytest tests`` here
(paths are relative to this file, so any working directory will do). They need lupa
(requirements.txt)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from workerkit import HttpRequest
from workerkit.testing import (
    FunctionLoadFailed,
    HostConnection,
    LoadResult,
    TestHost,
    binding,
    http_bindings,
)

WORKER = Path(__file__).resolve().parent.parent  # worker.py and worker.config.json
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


async def load(conn: HostConnection, name: str, bindings: Mapping[str, Any]) -> LoadResult:
    """Load app/<name> as the host does from its function.json (the same bindings)."""
    script = json.loads((APP / name / "function.json").read_text())["scriptFile"]
    return await conn.load_function(
        name, bindings=bindings, script_file=str(APP / name / script), directory=str(APP / name)
    )


def test_hello_greets_in_the_language_asked_for() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            hello = await load(conn, "hello", http_bindings())
            query = {"name": "Ada", "lang": "fr"}
            result = await conn.call(hello, {"req": HttpRequest("GET", "http://x/", query=query)})
            assert result.ok, result.error
            assert result.http is not None
            assert (result.http.status_code, result.http.text()) == (200, "Bonjour, Ada!\n")
            assert [entry.message for entry in result.logs] == ["greeting Ada"]

            nobody = await conn.call(hello, {"req": HttpRequest("GET", "http://x/")})
            assert nobody.http is not None and nobody.http.status_code == 400

    asyncio.run(scenario())


def test_orders_returns_the_order_and_sets_the_receipt() -> None:
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


def test_tick_warns_when_late() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            tick = await load(conn, "tick", {"timer": binding("timerTrigger")})
            timer = {"IsPastDue": True, "ScheduleStatus": {"Next": "2026-01-01T00:05:00"}}
            result = await conn.call(tick, {"timer": timer})
            assert result.ok, result.error
            assert [(entry.level, entry.message) for entry in result.logs] == [
                ("Warning", "tick is running late"),
                ("Information", "tick; next run at 2026-01-01T00:05:00"),
            ]

    asyncio.run(scenario())


def test_errors_are_the_functions_own(tmp_path: Path) -> None:
    broken = tmp_path / "broken.lua"
    broken.write_text("return function(")
    failing = tmp_path / "failing.lua"
    failing.write_text('return function(inputs) error("out of stock") end\n')

    async def scenario() -> None:
        async with worker() as conn:
            queue = {"msg": binding("queueTrigger")}
            # A syntax error fails the load, with Lua's message.
            with pytest.raises(FunctionLoadFailed, match=r"broken.lua:1: .* expected near <eof>"):
                await conn.load_function("broken", bindings=queue, script_file=str(broken))
            fails = await conn.load_function("failing", bindings=queue, script_file=str(failing))
            result = await conn.call(fails, {"msg": "hi"})
            assert result.status == "failure"
            assert result.error is not None and "out of stock" in result.error

    asyncio.run(scenario())
