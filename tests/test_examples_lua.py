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


# --- Containment (issue 11): memory, code the count hook cannot see, Python objects, sizes ---

RUN = "return function(inputs) return assert(load(inputs.msg))() end"  # runs the text it gets
TABLES_40MB = "local t = {} for i = 1, 2.5e5 do t[i] = {i, tostring(i), {x = i}} end"
HEAVY = {
    # ~40 MiB of tables, then the cap is hit inside json.encode / json.decode.
    "encode": TABLES_40MB + " return json.encode(t)",
    "decode": "local s = '[' .. string.rep('[1,2,3,{\"a\":\"bbbbbbbbbb\"}],', 1e5) .. '1]' "
    "local t = json.decode(s) local more = {} for i = 1, 1e7 do more[i] = {i} end return #t",
    "decode2": "local s = '[' .. string.rep('[1,2,3,{\"a\":\"bbbbbbbbbb\"}],', 1.2e5) .. '1]' "
    "local keep = {} for i = 1, 12 do keep[i] = json.decode(s) end return #keep",
    "result": TABLES_40MB + " return t, {more = t}",
}


def test_the_memory_cap_inside_json_and_conversions_fails_the_call_not_the_worker(
    tmp_path: Path,
) -> None:
    # Hitting LUA_MAX_MEMORY_MB while Python code was building Lua values (json.decode) used
    # to deadlock the whole worker: status, cancel and SIGTERM included.
    app = tmp_path / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "run.lua").write_text(RUN)

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "lua", app=app, env={"WORKERKIT_THREADS": "2"})
            assert (await load(conn, app, "run")).result.status == SUCCESS
            for name, code in HEAVY.items():
                reply = await conn.invoke("run", {"msg": code}, timeout=60)
                if reply.result.status != SUCCESS:  # some of these fit, some do not
                    assert reply.result.status == FAILURE, (name, reply.result)
                    message = reply.result.exception.message
                    assert "not enough memory" in message or "too large" in message, message
                # Still serving: a status request and an ordinary call.
                await conn.status(timeout=60)
                reply = await conn.invoke("run", {"msg": "return 'fine'"}, timeout=60)
                assert decode_output(reply.return_value) == "fine", name
            assert worker.process.returncode is None
            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


ESCAPING = {
    # xpcall's message handler: Lua runs it where the hook raised the cancel, hooks off.
    "handler": "return xpcall(function() print('spinning') while true do end end,"
    " function() while true do end end)",
    # endless C loops: the count hook never runs inside them
    "move": "print('spinning') return table.move({}, 1, 1e15, 2)",
    "insert": "print('spinning') local t = setmetatable({}, {__len = function() return 1e15 end})"
    " table.insert(t, 1, 'x')",
    "remove": "print('spinning') local t = setmetatable({}, {__len = function() return 1e15 end})"
    " table.remove(t, 1)",
    "rep": "print('spinning') local n = #string.rep('', 1e15) .. #(''):rep(1e15, '')"
    " while true do end",
}


def test_code_the_count_hook_could_not_see_is_stopped_by_cancel(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "run.lua").write_text(RUN)

    async def scenario() -> None:
        async with TestHost() as host:
            # One pool thread: a call that was not really stopped would block the next one.
            _, conn = await start(host, "lua", app=app, env={"WORKERKIT_THREADS": "1"})
            assert (await load(conn, app, "run")).result.status == SUCCESS
            for name, code in ESCAPING.items():
                pending = await conn.start_invocation("run", {"msg": code})
                await running(conn, pending.invocation_id)
                await conn.cancel(pending.invocation_id)
                assert (await pending.result(60)).result.status == CANCELLED, name
                reply = await conn.invoke("run", {"msg": "return 'free'"}, timeout=60)
                assert decode_output(reply.return_value) == "free", name

            # A key whose __tostring loops: the result is refused without calling it.
            code = ("local k = setmetatable({}, {__tostring = function() while true do end end})"
                    " return {[k] = 1}")  # fmt: skip
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            assert reply.result.status == FAILURE
            assert "keys must be strings or numbers, not a table" in (
                reply.result.exception.message
            )
            # The replacements behave as Lua's own.
            code = """
              local t = {} table.insert(t, 'b') table.insert(t, 1, 'a') table.insert(t, 3, 'c')
              local first, last = table.remove(t, 1), table.remove(t)
              local ok, err = pcall(table.insert, t, 5, 'x')
              return {first, last, t, table.move({1, 2, 3}, 1, 3, 2),
                      table.move({1, 2, 3}, 2, 3, 1), table.move({1, 2}, 1, 2, 1, {}),
                      string.rep('ab', 3, ','), ('x'):rep(2), #string.rep('', 1e15), err}
            """
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            assert decode_output(reply.return_value) == [
                "a", "c", ["b"], [1, 1, 2, 3], [2, 3, 3], [1, 2], "ab,ab,ab", "xx", 0,
                "bad argument #2 to 'insert' (position out of bounds)",
            ]  # fmt: skip

    arun(scenario())


def test_no_python_object_reaches_lua_code_and_sizes_are_bounded(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "run.lua").write_text(RUN)

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "lua", app=app)
            assert (await load(conn, app, "run")).result.status == SUCCESS
            # An error from a Python callback used to arrive as a Python object whose shared
            # metatable took a __gc, run later with hooks off and the GIL held.
            code = """
              local ok, err = pcall(json.decode, '{bad')
              local ok2, err2 = pcall(require, {})
              return {type(err), err, type(err2), getmetatable(err) == getmetatable('')}
            """
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            kind, message, kind2, string_metatable = decode_output(reply.return_value)
            assert (kind, kind2, string_metatable) == ("string", "string", True)
            assert "json.decode: Expecting property name" in message

            # A kilobyte of shared subtables is 2^22 leaves once converted: refused, fast.
            code = "local t = {'x'} for i = 1, 22 do t = {t, t} end return t"
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            assert reply.result.status == FAILURE
            assert "too large (over LUA_MAX_MEMORY_MB" in reply.result.exception.message
            code = "local t = {'x'} for i = 1, 22 do t = {t, t} end return json.encode(t)"
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            assert "json.encode: the value is too large" in reply.result.exception.message

            # 20 MiB log lines: 64 KiB of each is logged, the rest counted.
            code = "local s = string.rep('x', 20 << 20) print(s) log.warn(s) return 'logged'"
            reply = await conn.invoke("run", {"msg": code}, timeout=60)
            assert decode_output(reply.return_value) == "logged"
            lines = [e.message for e in conn.logs_for(reply.invocation_id)]
            note = f" [{(20 << 20) - (64 << 10)} more bytes not logged]"
            assert lines == ["x" * (64 << 10) + note] * 2

    arun(scenario())


def test_a_call_stuck_in_c_after_its_cancel_gets_the_worker_replaced(tmp_path: Path) -> None:
    # A backtracking pattern: string.find would run for longer than anyone waits, and the
    # count hook cannot interrupt it. Past LUA_STUCK_SECONDS the worker asks for a restart.
    app = tmp_path / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "run.lua").write_text(RUN)
    code = "print('searching') return string.find(string.rep('a', 60), string.rep('a*', 30) .. 'b')"

    async def scenario() -> None:
        async with TestHost() as host:
            env = {"LUA_STUCK_SECONDS": "1"}
            worker, conn = await start(host, "lua", app=app, env=env)
            assert (await load(conn, app, "run")).result.status == SUCCESS
            stuck = await conn.start_invocation("run", {"msg": code})
            await running(conn, stuck.invocation_id)
            await conn.cancel(stuck.invocation_id)
            assert (await stuck.result(60)).result.status == CANCELLED
            assert await worker.wait(60) == 200  # the host's "restart me" status
            errors = [m.message for m in conn.logs_for("") if m.level == LEVEL.Error]
            assert any(
                "did not stop 1 s after it was cancelled" in m
                and "asking the host for a new worker process" in m
                for m in errors
            ), errors

    arun(scenario())
