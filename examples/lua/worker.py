"""A language worker that runs Lua functions in an embedded interpreter (lupa, Lua 5.4).

Each function is a ``.lua`` file whose chunk returns a function::

    return function(inputs, context)   -- inputs.req, inputs.msg, ... by binding name
      return value, { receipt = "..." } -- $return, then named outputs (both optional)
    end

Every invocation gets a fresh interpreter (about a quarter of a millisecond with the
sandbox and the chunk), so invocations run in parallel and share no state, and a cancelled
or failed call leaves nothing behind. Functions run in a sandbox (see ``SANDBOX``): no
``io``, no ``os`` beyond clocks and dates, no ``debug``, no ``require`` of native
modules, no binary chunks. A count hook stops runaway code on cancel or timeout, and memory
is capped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua54 as lupa  # type: ignore[import-untyped]

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    HttpRequest,
    HttpResponse,
    Invocation,
    InvocationCancelled,
    InvocationError,
    InvocationResult,
)

TIMEOUT = float(os.environ.get("LUA_TIMEOUT_SECONDS", "300"))
MAX_MEMORY = int(os.environ.get("LUA_MAX_MEMORY_MB", "64")) << 20
HOOK_INTERVAL = 10_000  # Lua instructions between checks for cancel and timeout
MAX_DEPTH = 100  # nesting of tables converted to and from Lua
MODULE_NAME = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"error": logging.ERROR}  # fmt: skip

logging.getLogger("function").setLevel(logging.DEBUG)  # the host filters by its own levels

# Runs first in every interpreter, with the real globals; returns the function's environment.
# Why a sandbox: functions share the worker process, which holds the host connection and the
# app's settings; and a per-invocation interpreter is only isolated if the code cannot reach
# files, processes or native code. Functions get data in and out through bindings instead.
SANDBOX = """
local check, emit, read_module, interval, decode, encode = ...
local sethook, traceback = debug.sethook, debug.traceback
local cresume, ccreate, pack, unpack = coroutine.resume, coroutine.create, table.pack, table.unpack

local function hook()
  local why = check()
  if why then error(why, 0) end
end
local function stop_if_asked(ok, ...)  -- a pcall must not swallow a cancel or timeout
  if not ok then hook() end
  return ok, ...
end
local function copy(t) local c = {} for k, v in pairs(t) do c[k] = v end return c end

string.dump = nil  -- also reachable as ("").dump through the string metatable
local env = {}
for _, name in ipairs{"assert", "error", "getmetatable", "ipairs", "next", "pairs",
    "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber", "tostring", "type",
    "_VERSION"} do
  env[name] = _G[name]
end
env.setmetatable = function(t, mt)  -- finalizers run with hooks off: they could never be stopped
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available in this sandbox", 2)
  end
  return setmetatable(t, mt)
end
env.math, env.string, env.table, env.utf8 = copy(math), copy(string), copy(table), copy(utf8)
env.os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time}
env.pcall = function(...) return stop_if_asked(pcall(...)) end
env.xpcall = function(...) return stop_if_asked(xpcall(...)) end
env.coroutine = copy(coroutine)
local function create(f)
  local co = ccreate(f)
  sethook(co, hook, "", interval)  -- hooks are per coroutine
  return co
end
env.coroutine.create = create
env.coroutine.resume = function(...) return stop_if_asked(cresume(...)) end
env.coroutine.wrap = function(f)
  local co = create(f)
  return function(...)
    local r = pack(cresume(co, ...))
    if not r[1] then hook() error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end
-- Python callables stay locals: the function sees only Lua functions wrapping them.
env.json = {decode = function(text) return decode(text) end,  -- text -> value
            encode = function(value) return encode(value) end}  -- value -> text
env.load = function(chunk, name, _, e) return load(chunk, name, "t", e or env) end
env.log = {}
for _, level in ipairs{"debug", "info", "warn", "error"} do
  env.log[level] = function(...)
    local parts = pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    emit(level, table.concat(parts, "\\t", 1, parts.n))
  end
end
env.print = env.log.info
local loaded = {}
env.require = function(name)  -- Lua source modules from the app's lib/ folder only
  if loaded[name] == nil then
    local source, where = read_module(name)
    if not source then error(where, 2) end
    loaded[name] = assert(load(source, "@" .. where, "t", env))(name) or true
  end
  return loaded[name]
end
env._G = env
sethook(hook, "", interval)

-- run(function, ...): call it; on error return false and the message with a traceback.
local function run(f, ...)
  return xpcall(f, function(e) return traceback(tostring(e), 2) end, ...)
end
return env, run
"""


class Call:
    """One use of a fresh interpreter: keeps it, and tells the count hook when to stop.

    `close` lets the interpreter go at once: the callbacks reach it only through this
    object, so no reference cycle keeps it alive until Python's cyclic collector frees it,
    later and on whatever thread.
    """

    def __init__(self, invocation: Invocation | None = None) -> None:
        self.invocation = invocation
        self.deadline = time.monotonic() + TIMEOUT
        self.over = False
        self.runtime: Any = None

    def __call__(self) -> bytes | None:
        if self.over:
            return b"the invocation is over"
        if self.invocation is not None and self.invocation.cancelled:
            return b"cancelled"
        if time.monotonic() > self.deadline:
            return f"timed out after {TIMEOUT:g} s".encode()
        return None

    def close(self) -> None:
        self.over = True
        self.runtime = None


SANDBOX_SOURCE = SANDBOX.encode()


@dataclass(frozen=True, slots=True)
class Script:
    """A loaded function: its source and what its outputs are."""

    name: str
    source: bytes
    chunk_name: bytes
    http: frozenset[str]  # output bindings of type http ($return included)
    log: logging.Logger


class LuaWorker(workerkit.Worker):
    runtime_name = "lua"
    runtime_version = "5.4"

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, Script] = {}
        self.lib = Path.cwd() / "lib"  # the host starts us in the app root

    def on_function_load(self, function: FunctionInfo) -> None:
        path = Path(function.script_file)
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise FunctionLoadError(f"cannot read {path}: {exc}") from exc
        script = Script(
            name=function.name,
            source=source,
            chunk_name=f"@{path.name}".encode(),
            http=frozenset(n for n, b in function.output_bindings.items() if b.type == "http"),
            log=logging.getLogger(f"function.{function.name}"),
        )
        call = Call()
        try:  # compile and run the chunk once now, so mistakes show as load failures
            self._prepare(script, call)
        except InvocationError as exc:
            raise FunctionLoadError(f"{path.name}: {exc}") from None
        finally:
            call.close()
        self.scripts[function.function_id] = script

    def on_invocation(self, invocation: Invocation) -> Any:
        # A plain def: runs in a pool thread, so the interpreter may block it.
        script = self.scripts[invocation.function.function_id]
        call = Call(invocation)
        try:
            return self._invoke(script, invocation, call)
        finally:
            call.close()

    def _invoke(self, script: Script, invocation: Invocation, call: Call) -> Any:
        run, function = self._prepare(script, call)
        context = {
            "invocation_id": invocation.invocation_id,
            "function_name": script.name,
            "trigger_metadata": invocation.trigger_metadata,
        }
        try:
            ok, *values = _tuple(
                run(
                    function,
                    _to_lua(call.runtime, invocation.inputs),
                    _to_lua(call.runtime, context),
                )
            )
        except lupa.LuaError as exc:  # e.g. over the memory limit
            raise InvocationError(f"{script.name}: {_text(exc)}") from None
        if not ok:
            if invocation.cancelled:
                raise InvocationCancelled("cancelled")
            raise InvocationError(_text(values[0]))
        value, outputs = [*values, None, None][:2]
        named = _from_lua(outputs) if outputs is not None else {}
        if not isinstance(named, dict):
            raise InvocationError(f"{script.name}: the second return value must be a table")
        named["$return"] = _from_lua(value)
        return InvocationResult(
            outputs={
                name: _http(v) if name in script.http else v
                for name, v in named.items()
                if v is not None
            }
        )

    def _prepare(self, script: Script, call: Call) -> tuple[Any, Any]:
        """A fresh sandboxed interpreter (kept in `call`) with the script's function in it;
        returns the trusted ``run`` and the function."""
        runtime = call.runtime = lupa.LuaRuntime(
            encoding=None,  # Lua strings are bytes; we decode them ourselves
            unpack_returned_tuples=True,
            register_eval=False,
            register_builtins=False,
            max_memory=MAX_MEMORY,
            attribute_filter=_no_attributes,  # Lua code never reaches into Python objects
        )

        def emit(level: bytes, message: bytes) -> None:
            script.log.log(LEVELS.get(level, logging.INFO), _text(message))

        def decode(text: bytes) -> Any:
            return _to_lua(call.runtime, json.loads(text))

        def encode(value: Any) -> bytes:
            return json.dumps(_from_lua(value)).encode()

        load = runtime.globals().load
        sandbox = load(SANDBOX_SOURCE, b"=sandbox")  # named for tracebacks
        env, run = sandbox(call, emit, self._read_module, HOOK_INTERVAL, decode, encode)
        chunk, error = (*_tuple(load(script.source, script.chunk_name, b"t", env)), None)[:2]
        if chunk is None:
            raise InvocationError(_text(error))
        ok, function = (*_tuple(run(chunk)), None)[:2]
        if not ok:
            raise InvocationError(_text(function))
        if lupa.lua_type(function) != "function":
            raise InvocationError("the chunk must return a function")
        return run, function

    def _read_module(self, name: bytes) -> tuple[bytes | None, bytes]:
        if not isinstance(name, bytes) or not MODULE_NAME.match(name):
            return None, b"module names are dotted Lua identifiers"
        path = self.lib.joinpath(*name.decode().split(".")).with_suffix(".lua")
        try:
            return path.read_bytes(), path.name.encode()
        except OSError:
            return None, f"module {name.decode()!r} not found in {self.lib}".encode()


def _no_attributes(obj: Any, name: Any, setting: bool) -> Any:
    raise AttributeError("Python attributes are not available to Lua functions")


def _tuple(values: Any) -> tuple[Any, ...]:
    """Lua's return values as a tuple (lupa gives a lone value as itself)."""
    return values if isinstance(values, tuple) else (values,)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _to_lua(runtime: Any, value: Any, depth: int = 0) -> Any:
    """Python (JSON-shaped, HttpRequest, bytes) -> Lua; None in a table leaves a hole."""
    if isinstance(value, str):
        return value.encode()
    if value is None or isinstance(value, bool | int | float | bytes):
        return value
    if depth > MAX_DEPTH:
        raise InvocationError("input nested too deeply")
    if isinstance(value, HttpRequest):
        value = {"method": value.method, "url": value.url, "headers": value.headers,
                 "query": value.query, "params": value.params, "body": value.body}  # fmt: skip
    table = runtime.table()
    if isinstance(value, list | tuple):
        for index, item in enumerate(value, 1):
            table[index] = _to_lua(runtime, item, depth + 1)
    elif hasattr(value, "items"):
        for key, item in value.items():
            table[_to_lua(runtime, key, depth + 1)] = _to_lua(runtime, item, depth + 1)
    else:
        return None  # what the host sent but Lua cannot hold (e.g. model binding data)
    return table


def _from_lua(value: Any, depth: int = 0) -> Any:
    """Lua -> JSON-shaped Python: a table with keys 1..n is a list, any other a dict."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value  # binary data stays bytes
    if value is None or isinstance(value, bool | int | float):
        return value
    if lupa.lua_type(value) != "table":
        raise InvocationError(f"cannot return a Lua {lupa.lua_type(value)} to the host")
    if depth > MAX_DEPTH:
        raise InvocationError("result nested too deeply (or a table contains itself)")
    items = list(value.items())
    if items and all(isinstance(k, int) for k, _ in items) and len(items) == len(value):
        return [_from_lua(v, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
    return {_text(k): _from_lua(v, depth + 1) for k, v in items}


def _http(value: Any) -> HttpResponse:
    if not isinstance(value, dict):
        return HttpResponse(body=value if isinstance(value, str | bytes) else str(value))
    body = value.get("body", "")
    return HttpResponse(
        status_code=int(value.get("status") or 200),
        body=body if isinstance(body, str | bytes) else str(body),
        headers={str(k): str(v) for k, v in (value.get("headers") or {}).items()},
    )


if __name__ == "__main__":
    LuaWorker.main()
