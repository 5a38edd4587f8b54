"""This worker's tests: worker.py started as the host starts it, its sample app loaded, the
functions called through `workerkit.testing`. Run them with ``python -m pytest tests`` here
(paths are relative to this file, so any working directory will do)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from workerkit import HttpRequest
from workerkit.testing import FunctionLoadFailed, HostConnection, TestHost, http_bindings

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


def get(path: str, **query: str) -> HttpRequest:
    """A GET request as the host passes it to a function."""
    return HttpRequest("GET", f"http://localhost{path}", query=query)


def test_hello_renders_the_name_from_the_query() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            hello = await conn.load_function(
                "hello", bindings=http_bindings(), script_file=str(APP / "hello" / "hello.txt")
            )
            result = await conn.call(hello, {"req": get("/api/hello", name="Ada")})
            assert result.ok, result.error
            assert result.http is not None
            assert result.http.status_code == 200
            assert result.http.text() == "Hello, Ada!\n"
            assert result.http.headers["content-type"] == "text/plain"
            assert [entry.message for entry in result.logs] == ["rendering hello with ['name']"]

            missing = await conn.call(hello, {"req": get("/api/hello")})
            assert missing.http is not None
            assert missing.http.status_code == 400
            assert "cannot render" in missing.http.text()

    asyncio.run(scenario())


def test_sum_renders_route_parameters() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            total = await conn.load_function(
                "sum", bindings=http_bindings(), script_file=str(APP / "sum" / "sum.txt")
            )
            request = HttpRequest(
                "GET", "http://localhost/api/sum/3/4", params={"a": "3", "b": "4"}
            )
            result = await conn.call(total, {"req": request})
            assert result.http is not None
            assert (result.http.status_code, result.http.text()) == (200, "3 and 4\n")

    asyncio.run(scenario())


def test_a_missing_template_fails_its_load_only() -> None:
    async def scenario() -> None:
        async with worker() as conn:
            with pytest.raises(FunctionLoadFailed, match="cannot read"):
                await conn.load_function(
                    "gone", bindings=http_bindings(), script_file=str(APP / "gone" / "gone.txt")
                )
            hello = await conn.load_function(
                "hello", bindings=http_bindings(), script_file=str(APP / "hello" / "hello.txt")
            )
            assert (await conn.call(hello, {"req": get("/api/hello", name="Bo")})).ok

    asyncio.run(scenario())
