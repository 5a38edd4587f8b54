"""Worker processes started with the host's real argv: exit codes and process-level faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

from conftest import arun, running

from workerkit import Claim, ClaimsIdentity, HttpRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import TestHost, WorkerProcess

SCRIPT = str(Path(__file__).resolve().parent / "subprocess_worker.py")
SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))


async def spawn(host: TestHost, kind: str = "Scenarios", cwd: str | None = None) -> WorkerProcess:
    worker = await host.spawn(
        [sys.executable, SCRIPT], env={**os.environ, "WK_WORKER": kind}, cwd=cwd
    )
    assert worker.connection is not None
    init = await worker.connection.init()
    assert init.result.status == SUCCESS
    return worker


def test_the_worker_exits_non_zero_promptly_when_the_host_ends_the_stream() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = await spawn(host)
            conn = worker.connection
            assert conn is not None
            await conn.load("w", "wait")
            await conn.start_invocation("w")
            conn.close()
            assert await worker.wait(60) == 1
            assert b"LanguageWorkerConsoleLogERROR: worker stopping: " in worker.stderr

    arun(scenario())


def test_sigterm_drains_like_worker_terminate() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = await spawn(host)
            conn = worker.connection
            assert conn is not None
            await conn.load("s", "sleep")
            pending = await conn.start_invocation("s", {"seconds": 0.3})
            await running(conn, pending.invocation_id)
            worker.process.send_signal(signal.SIGTERM)
            assert (await pending).result.status == SUCCESS
            assert await worker.wait(60) == 0

    arun(scenario())


def test_terminate_with_a_sync_hook_that_never_returns_still_exits_zero() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = await spawn(host, "SyncScenarios")
            conn = worker.connection
            assert conn is not None
            await conn.load("b", "slow")
            stuck = await conn.start_invocation("b", {"seconds": 3600})
            await running(conn, stuck.invocation_id)
            await conn.terminate(grace_period=1.0)
            assert (await stuck).result.status == CANCELLED
            assert await worker.wait(60) == 0

    arun(scenario())


def test_environment_reload_in_a_real_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = await spawn(host)
            conn = worker.connection
            assert conn is not None
            environment = {**os.environ, "WK_TEST": "reloaded"}
            reply = await conn.reload_environment(environment, str(tmp_path))
            assert reply.result.status == SUCCESS
            await conn.load("e", "env")
            result = await conn.invoke("e", {})
            assert result.return_value.json == f'{{"value":"reloaded","cwd":"{tmp_path}"}}'

    arun(scenario())


def test_betterproto2_is_imported_only_for_a_message_the_fast_path_does_not_read() -> None:
    """Start-up (StartStream, init, worker indexing, loads), HTTP invocations (with the
    identities the host attaches) and their logs are read and written by `workerkit._wire`, so a
    worker is ready and serving without importing betterproto2 (~60 ms of start-up); the
    first uncommon message (here a status request) imports it."""

    async def scenario() -> None:
        async with TestHost() as host:
            worker = await spawn(host)
            conn = worker.connection
            assert conn is not None
            indexing = await conn.functions_metadata()
            assert indexing.result.status == SUCCESS and indexing.use_default_metadata_indexing
            assert (await conn.load("m", "modules")).result.status == SUCCESS
            identity = ClaimsIdentity("WebJobsAuthLevel", None, "role", (Claim("level", "Admin"),))
            request = HttpRequest(
                "POST",
                "http://127.0.0.1/api/m",
                headers={"a": "b"},
                body=b"{}",
                identities=(identity,),
            )
            inputs = {"req": request}
            metadata = {"Headers": {"a": "b"}, "Query": {}}
            first = await conn.invoke("m", inputs, trigger_metadata=metadata)
            assert first.result.status == SUCCESS
            assert json.loads(first.return_value.json) == {"betterproto2": False}
            logs = [log.message for log in conn.logs_for(first.invocation_id)]
            assert logs == ["checking the modules"]
            await conn.status()
            later = await conn.invoke("m", inputs, trigger_metadata=metadata)
            assert json.loads(later.return_value.json) == {"betterproto2": True}

    arun(scenario())


def test_an_unreachable_host_is_reported_on_stderr_with_a_non_zero_exit() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, "--host", "127.0.0.1", "--port", str(port),
            "--workerId", "w1", "--requestId", "r1",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1
        assert b"LanguageWorkerConsoleLog" in stderr
        assert f"cannot reach the host at 127.0.0.1:{port}".encode() in stderr

    arun(scenario())
