"""Worker.request_restart: a worker that knows it is broken asks the host for a new process."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import arun

import workerkit
from workerkit import FunctionInfo, Invocation
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import TestHost

SUCCESS = pb.StatusResultStatus.Success


class Restarting(workerkit.Worker):
    """`slow` waits for its gate; `broken` asks for a restart from its pool thread."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.names: dict[str, str] = {}

    def on_function_load(self, function: FunctionInfo) -> None:
        self.names[function.function_id] = function.name

    def on_invocation(self, invocation: Invocation) -> Any:
        if self.names[invocation.function.function_id] == "broken":
            self.request_restart("the broken function says so")
            return "asked"
        assert self.gate.wait(60)
        return "slow done"


def test_a_restart_drains_what_runs_then_exits_200() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = Restarting()
            started = await host.start_worker(worker)
            conn = started.connection
            await conn.init()
            for name in ("slow", "broken"):
                assert (await conn.load(name, name)).result.status == SUCCESS
            slow = await conn.start_invocation("slow", {})
            reply = await conn.invoke("broken", {})
            assert reply.result.status == SUCCESS
            # The worker drains: the call in flight still gets its answer, then it exits 200.
            worker.gate.set()
            assert (await slow.result(60)).result.status == SUCCESS
            assert await started.wait(60) == 200
            errors = [m.message for m in conn.logs_for("") if m.level == pb.RpcLogLevel.Error]
            assert "restart requested: the broken function says so" in errors

    arun(scenario())


def test_a_restart_outside_a_session_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not serving a host"):
        Restarting().request_restart("nobody listens")
