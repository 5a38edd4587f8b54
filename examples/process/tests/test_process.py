"""This worker's tests: worker.py started as the host starts it, its sample app loaded, the
functions called through `workerkit.testing`. Run them with ``python -m pytest tests`` here
(paths are relative to this file, so any working directory will do). The sample functions
need node, perl and bash on PATH."""

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


def test_hello_in_node() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            hello = await load(conn, "hello", http_bindings())
            request = HttpRequest("GET", "http://localhost/api/hello", query={"name": "Ada"})
            result = await conn.call(hello, {"req": request})
            assert result.ok, result.error
            assert result.http is not None
            assert (result.http.status_code, result.http.text()) == (200, "Hello, Ada!\n")
            # stderr lines are the invocation's log, at the level their prefix names.
            assert [(e.level, e.message) for e in result.logs] == [("Information", "greeting Ada")]

            nobody = await conn.call(hello, {"req": HttpRequest("GET", "http://localhost/")})
            assert nobody.http is not None and nobody.http.status_code == 400
            assert [(e.level, e.message) for e in nobody.logs] == [("Warning", "no name given")]

    asyncio.run(scenario())


def test_orders_in_perl() -> None:
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

    asyncio.run(scenario())


def test_tick_in_bash() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            tick = await load(conn, "tick", {"timer": binding("timerTrigger")})
            timer = {"IsPastDue": False, "ScheduleStatus": {"Next": "2026-01-01T00:05:00"}}
            result = await conn.call(tick, {"timer": timer})
            assert result.ok, result.error
            assert result.return_value is None and result.outputs == {}
            assert result.logs, "tick.sh logs a line on stderr"

    asyncio.run(scenario())


def test_a_failing_program_fails_its_invocation_only(tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text('echo "error: database unreachable" >&2\nexit 3\n')

    async def scenario() -> None:
        async with worker() as conn:
            fail = await conn.load_function(
                "fail", bindings={"msg": binding("queueTrigger")}, script_file=str(script)
            )
            result = await conn.call(fail, {"msg": "hi"})
            assert result.status == "failure"
            assert result.error is not None and "database unreachable" in result.error
            hello = await load(conn, "hello", http_bindings())
            request = HttpRequest("GET", "http://localhost/api/hello", query={"name": "Bo"})
            assert (await conn.call(hello, {"req": request})).ok

    asyncio.run(scenario())
