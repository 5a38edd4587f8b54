"""WORKERKIT_UVLOOP=1 (``workerkit[speed]``): the worker runs on uvloop's event loop, and the
batched writes work over its transport as over asyncio's. The Python example runs as a real
subprocess against TestHost."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import arun
from example_apps import SUCCESS, start

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import decode_output
from workerkit.testing import TestHost, binding

USER = pb.RpcLogRpcLogCategory.User

LOOP = """\
import asyncio
import logging


async def main(lines):
    for i in range(int(lines)):
        logging.info("line %d", i)
    return type(asyncio.get_running_loop()).__module__
"""


@pytest.mark.parametrize(("setting", "module"), [("1", "uvloop"), ("0", "asyncio.unix_events")])
def test_the_event_loop_follows_workerkit_uvloop(tmp_path: Path, setting: str, module: str) -> None:
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "__init__.py").write_text(LOOP)

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "python", app=tmp_path, env={"WORKERKIT_UVLOOP": setting})
            bindings = {"lines": binding("queueTrigger"), "$return": binding("queue", "out")}
            script = str(tmp_path / "loop" / "__init__.py")
            loaded = await conn.load("l", "loop", bindings=bindings, script_file=script)
            assert loaded.result.status == SUCCESS, loaded.result
            for _ in range(20):
                reply = await conn.invoke("l", {"lines": "25"}, timeout=30)
                assert reply.result.status == SUCCESS, reply.result
                assert decode_output(reply.return_value) == module
                logs = [(e.message, e.log_category) for e in conn.logs_for(reply.invocation_id)]
                assert logs == [(f"line {i}", USER) for i in range(25)]  # all, in order, first

    arun(scenario(), timeout=60)
