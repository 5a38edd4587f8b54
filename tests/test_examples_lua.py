"""examples/lua: Lua functions in an embedded, sandboxed interpreter, driven through TestHost."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import EXAMPLES, arun, running
from example_apps import (
    CANCELLED,
    FAILURE,
    SUCCESS,
    emulator,
    function_id,
    http,
    load_app,
    start,
)

from workerkit import HttpRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import decode_output
from workerkit.testing import HostConnection, TestHost, binding

APP = EXAMPLES / "lua" / "app"
LEVEL = pb.RpcLogLevel


def logs(conn: HostConnection, invocation_id: str) -> list[tuple[str, str]]:
    return [(LEVEL(e.level).name, e.message) for e in conn.logs_for(invocation_id)]


def test_the_sample_app_http_timer_queue_and_named_outputs() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "lua")
            loads = await load_app(conn, APP)
            assert {n: r.result.status for n, r in loads.items()} == dict.fromkeys(
                ("hello", "orders", "tick"), SUCCESS
            )

            query = {"name": "Ada", "lang": "fr"}
            request = HttpRequest("GET", "http://x/api/hello?name=Ada&lang=fr", query=query)
            reply = await conn.invoke(function_id("hello"), {"req": request})
            assert reply.result.status == SUCCESS, reply.result
            response = decode_output(reply.return_value)
            assert (response.status_code, response.text()) == (200, "Bonjour, Ada!\n")
            assert response.headers == {"content-type": "text/plain"}
            assert logs(conn, reply.invocation_id) == [("Information", "greeting Ada")]

            reply = await conn.invoke(function_id("hello"), {"req": HttpRequest("GET", "http://x")})
            assert decode_output(reply.return_value).status_code == 400
            assert logs(conn, reply.invocation_id) == [("Warning", "no name given")]

            status = {"Next": "2026-01-01T00:05:00"}
            timer = pb.TypedData(json=json.dumps({"IsPastDue": True, "ScheduleStatus": status}))
            reply = await conn.invoke(function_id("tick"), {"timer": timer})
            assert reply.result.status == SUCCESS, reply.result
            assert reply.return_value is None and not reply.output_data
            assert logs(conn, reply.invocation_id) == [
                ("Warning", "tick is running late"),
                ("Information", "tick; next run at 2026-01-01T00:05:00"),
            ]

            order = {"id": "o-1", "items": [{"price": 2.5, "quantity": 2}, {"price": 1}]}
            reply = await conn.invoke(
                function_id("orders"),
                {"msg": json.dumps(order)},
                trigger_metadata={"DequeueCount": pb.TypedData(json="2")},
            )
            assert reply.result.status == SUCCESS, reply.result
            assert [(b.name, decode_output(b.data)) for b in reply.output_data] == [
                ("receipt", "order o-1: 6.00")
            ]
            assert decode_output(reply.return_value) == {**order, "total": 6.0}
            assert logs(conn, reply.invocation_id) == [
                ("Information", "order o-1: 2 items, total 6.00 (attempt 2)")
            ]

            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


PROBE = """
-- Runs the Lua text it is given, in the function's own sandbox; reports what happened.
return function(inputs)
  local f, err = load(inputs.msg)
  if not f then return { ok = false, err = err } end
  local ok, result = pcall(f)
  return { ok = ok, err = not ok and tostring(result) or nil, result = result }
end
"""
# Each loop says it started (tests wait for that line), then runs until stopped.
SPIN = 'return function() print("spinning") local n = 0 while true do n = n + 1 end end'
SPIN_PCALL = """
return function()
  print("spinning")
  while true do pcall(function() while true do end end) end
end
"""
SPIN_COROUTINE = """
return function()
  print("spinning")
  local co = coroutine.wrap(function() while true do end end)
  while true do pcall(co) end
end
"""
FAILING = """
local function inner(order)
  error("no price for " .. order)
end

return function(inputs)
  inner(inputs.msg)
end
"""
SHAPES = """
return function(inputs)
  local doc = inputs.msg
  return { list = doc.list, map = doc.map, n = #doc.list, empty = {}, int = 3, float = 0.5,
           yes = true, nested = { { 1, 2 }, { x = "y" } } }
end
"""


def make_app(root: Path) -> Path:
    for name, source in (("probe", PROBE), ("spin", SPIN), ("spinpcall", SPIN_PCALL),
                         ("spinco", SPIN_COROUTINE), ("failing", FAILING),
                         ("shapes", SHAPES), ("broken", "return function( end")):  # fmt: skip
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.lua").write_text(source)
    return root


async def load(conn: HostConnection, app: Path, name: str) -> pb.FunctionLoadResponse:
    return await conn.load(
        name,
        name,
        bindings={"msg": binding("queueTrigger"), "$return": binding("queue", "out")},
        script_file=str(app / name / f"{name}.lua"),
    )


ESCAPES = {
    "return os.execute('touch {marker}')": "attempt to call a nil value (field 'execute')",
    "return io.open('{marker}', 'w')": "attempt to index a nil value (global 'io')",
    "return require('os').execute('touch {marker}')": "module 'os' not found",
    "return require('socket.core')": "module 'socket.core' not found",
    "return package.loadlib('libc.so.6', 'system')": (
        "attempt to index a nil value (global 'package')"
    ),
    "return string.dump(print)": "attempt to call a nil value (field 'dump')",
    "return (''):dump()": "attempt to call a nil value (method 'dump')",
    "return assert(load('\\27Lua' .. string.rep('x', 32)))": (
        "attempt to load a binary chunk (mode is 't')"
    ),
    "return loadstring('return 1')": "attempt to call a nil value (global 'loadstring')",
    "return dofile('/etc/passwd')": "attempt to call a nil value (global 'dofile')",
    "return debug.sethook()": "attempt to index a nil value (global 'debug')",
    "return os.remove('{marker}')": "attempt to call a nil value (field 'remove')",
    # App settings (secrets too) live in the environment of the worker process.
    "return os.getenv('PATH')": "attempt to call a nil value (field 'getenv')",
    # The worker's Python callables are not reachable (their __globals__ would be Python).
    "return json.decode.__globals__": "attempt to index a function value (field 'decode')",
    "return print.__globals__": "attempt to index a function value (global 'print')",
    # Finalizers run with hooks switched off, so a looping one could never be stopped.
    "setmetatable({{}}, {{__gc = function() while true do end end}})": (
        "__gc metamethods are not available in this sandbox"
    ),
}


def test_the_sandbox_blocks_processes_files_native_code_and_bytecode(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    marker = tmp_path / "escaped"
    marker.write_text("still here")

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "lua", app=app)
            assert (await load(conn, app, "probe")).result.status == SUCCESS
            for code, expected in ESCAPES.items():
                reply = await conn.invoke("probe", {"msg": code.format(marker=marker)})
                assert reply.result.status == SUCCESS, reply.result
                outcome = decode_output(reply.return_value)
                assert outcome["ok"] is False, (code, outcome)
                assert expected in outcome["err"], (code, outcome)
            reply = await conn.invoke("probe", {"msg": "return os.time() > 0 and #os.date()"})
            assert decode_output(reply.return_value)["result"] > 0
            assert marker.read_text() == "still here"

    arun(scenario())


def test_errors_runaway_loops_cancel_and_timeouts(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")

    async def scenario() -> None:
        async with TestHost() as host:
            # One pool thread: a loop that was not really stopped would block what follows.
            # The default Lua timeout (300 s): only the cancel stops these loops.
            _, conn = await start(host, "lua", app=app, env={"WORKERKIT_THREADS": "1"})
            for name in ("failing", "spin", "spinpcall", "spinco", "shapes"):
                assert (await load(conn, app, name)).result.status == SUCCESS, name

            broken = await load(conn, app, "broken")
            assert broken.result.status == FAILURE
            assert "broken.lua: broken.lua:1: <name> or '...' expected near 'end'" in (
                broken.result.exception.message
            )

            reply = await conn.invoke("failing", {"msg": "tea"})
            assert reply.result.status == FAILURE
            message = reply.result.exception.message
            assert message.startswith("failing.lua:3: no price for tea\nstack traceback:")
            assert "failing.lua:3: in " in message and "failing.lua:7: in " in message

            for name in ("spin", "spinpcall", "spinco"):
                pending = await conn.start_invocation(name, {"msg": "x"})
                await running(conn, pending.invocation_id)  # it is looping
                await conn.cancel(pending.invocation_id)
                assert (await pending.result(60)).result.status == CANCELLED, name
                # The single thread is free again: the loop really stopped.
                reply = await conn.invoke("shapes", {"msg": {"list": [1], "map": {}}}, timeout=60)
                assert reply.result.status == SUCCESS, (name, reply.result)

        async with TestHost() as host:
            # A 1 s Lua timeout, for a loop that never ends: the timeout is the only way out.
            env = {"WORKERKIT_THREADS": "1", "LUA_TIMEOUT_SECONDS": "1"}
            _, conn = await start(host, "lua", app=app, env=env)
            for name in ("spinpcall", "shapes"):
                assert (await load(conn, app, name)).result.status == SUCCESS, name
            reply = await conn.invoke("spinpcall", {"msg": "x"}, timeout=60)
            assert reply.result.status == FAILURE
            assert reply.result.exception.message.startswith("timed out after 1 s")

            # ... and the thread is free again.
            reply = await conn.invoke(
                "shapes", {"msg": {"list": ["a", "b"], "map": {"k": [1.5, {"z": 1}], "gone": None}}}
            )
            assert decode_output(reply.return_value) == {
                "list": ["a", "b"], "map": {"k": [1.5, {"z": 1}]}, "n": 2, "empty": {}, "int": 3,
                "float": 0.5, "yes": True, "nested": [[1, 2], {"x": "y"}],
            }  # fmt: skip

    arun(scenario())


def test_end_to_end_through_workerkit_host_with_real_http() -> None:
    with emulator(EXAMPLES / "lua", APP) as url:
        assert http("GET", f"{url}/api/hello?name=Ada&lang=es") == (200, b"Hola, Ada!\n")
        assert http("GET", f"{url}/api/hello")[0] == 400
