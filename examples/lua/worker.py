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

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
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
JSON_LIMIT = MAX_MEMORY // 8  # bytes json.decode takes (Python's objects cost many times that)
LOG_LIMIT = 64 << 10  # bytes of one log line; the rest is counted, not logged
#: Seconds a call may go on after its cancel or timeout (stuck in C) before the worker asks
#: the host to replace it.
STUCK_GRACE = float(os.environ.get("LUA_STUCK_SECONDS", "30"))
MODULE_NAME = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"error": logging.ERROR}  # fmt: skip

logging.getLogger("function").setLevel(logging.DEBUG)  # the host filters by its own levels
log = logging.getLogger("lua")

# Runs first in every interpreter, with the real globals; returns the function's environment.
# Why a sandbox: functions share the worker process, which holds the host connection and the
# app's settings; and a per-invocation interpreter is only isolated if the code cannot reach
# files, processes or native code. Functions get data in and out through bindings instead.
SANDBOX = """
local check, reasons, emit, read_module, interval, decode, encode, lift, restore, log_limit = ...
local sethook, traceback = debug.sethook, debug.traceback
local cresume, ccreate, pack, unpack = coroutine.resume, coroutine.create, table.pack, table.unpack
local srep, type, select, error, pcall = string.rep, type, select, error, pcall

local function hook()
  local why = check()
  if why then error(reasons[why], 0) end
end
local function stop_if_asked(ok, ...)  -- a pcall must not swallow a cancel or timeout
  if not ok then hook() end
  return ok, ...
end
local function copy(t) local c = {} for k, v in pairs(t) do c[k] = v end return c end

-- Python code may allocate Lua memory only while the cap is lifted: a memory error raised
-- under Python frames would unwind past them and leave the worker deadlocked. So every
-- Python callback runs uncapped (it keeps its own budget), and Lua code never does.
-- Callbacks return a value and an error message; they never raise into Lua.
local function bridge(f)  -- returns a value, or nil and an error message
  return function(...)
    lift()
    local ok, value, err = pcall(f, ...)
    if not ok then value, err = nil, value end
    if err ~= nil then err = tostring(err) end  -- never a Python object (its metatable is shared)
    restore()
    return value, err
  end
end
local function raising(f)
  f = bridge(f)
  return function(...)
    local value, err = f(...)
    if err ~= nil then error(err, 2) end
    return value
  end
end

-- C functions that loop without running Lua code, so the count hook never sees them:
-- replaced by Lua code the hook interrupts.
local function position(value, n, name, low, high)
  local i = math.tointeger(value)
  if i == nil then
    error(("bad argument #%d to '%s' (number has no integer representation)"):format(n, name), 3)
  end
  if low and (i < low or i > high) then
    error(("bad argument #%d to '%s' (position out of bounds)"):format(n, name), 3)
  end
  return i
end
local function length(t, name)
  if type(t) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(name, type(t)), 3)
  end
  return #t
end
string.rep = function(s, n, sep)  -- "" repeated 1e15 times is a long C loop
  if (tonumber(n) or 0) > 1 and srep(s, 1) == "" and (sep == nil or srep(sep, 1) == "") then
    return ""
  end
  return srep(s, n, sep)
end
table.insert = function(t, ...)
  local count = select("#", ...)
  if count == 1 then t[length(t, "insert") + 1] = ... return end
  if count ~= 2 then error("wrong number of arguments to 'insert'", 2) end
  local e = length(t, "insert") + 1
  local pos, value = ...
  pos = position(pos, 2, "insert", 1, e)
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = value
end
table.remove = function(t, pos)
  local size = length(t, "remove")
  pos = pos == nil and size or position(pos, 2, "remove")
  if pos ~= size and (pos < 1 or pos > size + 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local value = t[pos]
  for i = pos, size - 1 do t[i] = t[i + 1] end
  t[pos < size and size or pos] = nil
  return value
end
table.move = function(a1, f, e, t, a2)
  a2 = a2 == nil and a1 or a2
  f, e, t = position(f, 2, "move"), position(e, 3, "move"), position(t, 4, "move")
  if e >= f then
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, e - f do a2[t + i] = a1[f + i] end
    else
      for i = e - f, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end

string.dump = nil  -- also reachable as ("").dump through the string metatable
local env = {}
for _, name in ipairs{"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
    "rawlen", "rawset", "select", "tonumber", "tostring", "type", "_VERSION"} do
  env[name] = _G[name]
end
env.getmetatable = function(v)  -- a Python object's metatable is shared and must stay so
  if type(v) == "userdata" then return nil end
  return getmetatable(v)
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
-- Lua runs a message handler where the error was raised: for an error raised by the count
-- hook, that is with hooks off, and a handler that loops could never be stopped. This one
-- runs once the stack has unwound (no debug library, so the handler cannot tell).
env.xpcall = function(f, handler, ...)
  local results = pack(pcall(f, ...))
  if results[1] then return unpack(results, 1, results.n) end
  hook()
  local _, message = stop_if_asked(pcall(handler, results[2]))
  return false, message
end
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
env.json = {decode = raising(decode), encode = raising(encode)}  -- text <-> value
env.load = function(chunk, name, _, e) return load(chunk, name, "t", e or env) end
env.log = {}
local emit_line = raising(emit)
for _, level in ipairs{"debug", "info", "warn", "error"} do
  env.log[level] = function(...)
    local parts = pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    local line = parts.n == 1 and parts[1] or table.concat(parts, "\\t", 1, parts.n)
    emit_line(level, line:sub(1, log_limit), #line)  -- a log line is not a way to copy memory
  end
end
env.print = env.log.info
local loaded, read = {}, bridge(read_module)
env.require = function(name)  -- Lua source modules from the app's lib/ folder only
  if loaded[name] == nil then
    local source, err = read(name)
    if source == nil then error(err, 2) end
    local where = "@" .. name:match("[^.]*$") .. ".lua"
    loaded[name] = assert(load(source, where, "t", env))(name) or true
  end
  return loaded[name]
end
env._G = env
sethook(hook, "", interval)

-- run(function, ...): call it with the memory cap on; on error return false and the message
-- with a traceback. Results go back to Python uncapped.
local function run(f, ...)
  restore()
  local results = pack(xpcall(f, function(e) return traceback(tostring(e), 2) end, ...))
  lift()
  return unpack(results, 1, results.n)
end
return env, run
"""


class Call:
    """One use of a fresh interpreter: keeps it, tells the count hook when to stop, and lifts
    or restores the memory cap (see `bridge` in SANDBOX).

    `close` lets the interpreter go at once: the callbacks reach it only through this
    object, so no reference cycle keeps it alive until Python's cyclic collector frees it,
    later and on whatever thread.
    """

    def __init__(self, invocation: Invocation | None = None, name: str = "") -> None:
        self.invocation = invocation
        self.name = name
        self.deadline = time.monotonic() + TIMEOUT
        self.over = False
        self.runtime: Any = None
        self.stopping_since: float | None = None  # when the watcher saw a cancel or timeout

    def __call__(self) -> int | None:
        """For the count hook: an index into REASONS (a number: pushing it costs Lua no
        memory, which may be exhausted right now), or None to go on."""
        if self.over:
            return 1
        if self.invocation is not None and self.invocation.cancelled:
            return 2
        if time.monotonic() > self.deadline:
            return 3
        return None

    def reason(self) -> str | None:
        why = self()
        return None if why is None else REASONS[why]

    def lift(self) -> None:
        self.runtime.set_max_memory(0)

    def restore(self) -> None:
        self.runtime.set_max_memory(MAX_MEMORY)

    def close(self) -> None:
        self.over = True
        self.runtime = None


REASONS = {1: "the invocation is over", 2: "cancelled", 3: f"timed out after {TIMEOUT:g} s"}
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
        self.running: set[Call] = set()
        self.lock = threading.Lock()
        self.watcher: threading.Thread | None = None

    def on_environment_reload(self, reload: workerkit.EnvironmentReload) -> None:
        # Specialization: started for a placeholder app, now serving the real one.
        self.lib = Path(reload.function_app_directory or Path.cwd()) / "lib"

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
            http=frozenset(
                n for n, b in function.output_bindings.items() if b.type.lower() == "http"
            ),
            log=logging.getLogger(f"function.{function.name}"),
        )
        call = Call(name=f"loading {function.name}")
        try:  # compile and run the chunk once now, so mistakes show as load failures
            with self.watched(call):
                self._prepare(script, call)
        except InvocationError as exc:
            raise FunctionLoadError(f"{path.name}: {exc}") from None
        self.scripts[function.function_id] = script

    def on_invocation(self, invocation: Invocation) -> Any:
        # A plain def: runs in a pool thread, so the interpreter may block it.
        script = self.scripts[invocation.function.function_id]
        call = Call(invocation, f"{script.name} ({invocation.invocation_id})")
        with self.watched(call):
            return self._invoke(script, invocation, call)

    @contextlib.contextmanager
    def watched(self, call: Call) -> Iterator[None]:
        """Run `call` where the watcher sees it; close its interpreter afterwards."""
        with self.lock:
            self.running.add(call)
            if self.watcher is None:
                self.watcher = threading.Thread(target=self._watch, name="lua-watcher", daemon=True)
                self.watcher.start()
        try:
            yield
        finally:
            with self.lock:
                self.running.discard(call)
            call.close()

    def _watch(self) -> None:
        """Replace the worker when a call ignores its cancel or timeout.

        The count hook stops Lua code, but not one long call into C (a backtracking
        ``string.find``): its thread stays busy, and enough of them stop every function.
        Python cannot stop a thread, so past `STUCK_GRACE` the worker asks the host for a
        fresh process (the calls still running get the shutdown grace period to finish).
        """
        while True:
            time.sleep(min(1.0, max(STUCK_GRACE / 4, 0.05)))
            now = time.monotonic()
            with self.lock:
                calls = list(self.running)
            for call in calls:
                if call.stopping_since is None:
                    if call.reason() is not None:
                        call.stopping_since = now
                elif now - call.stopping_since >= STUCK_GRACE:
                    log.error(
                        "Lua call %s did not stop %g s after it was %s (stuck in one C call,"
                        " which the count hook cannot interrupt): asking the host for a new"
                        " worker process",
                        call.name, STUCK_GRACE, call.reason(),
                    )  # fmt: skip
                    try:
                        self.request_restart(f"a Lua call ({call.name}) could not be stopped")
                    except RuntimeError as exc:  # not serving a host (a test calling hooks)
                        log.error("%s", exc)
                    return

    def _invoke(self, script: Script, invocation: Invocation, call: Call) -> Any:
        run, function = self._prepare(script, call)
        budget = Budget(call)
        context = {
            "invocation_id": invocation.invocation_id,
            "function_name": script.name,
            "trigger_metadata": invocation.trigger_metadata,
        }
        args = (
            _to_lua(call.runtime, invocation.inputs, budget),
            _to_lua(call.runtime, context, budget),
        )
        try:
            ok, *values = _tuple(run(function, *args))
        except lupa.LuaError as exc:  # e.g. over the memory limit outside the function
            raise InvocationError(f"{script.name}: {_text(exc)}") from None
        finally:
            call.lift()  # whatever happened, Python converts the results next
        if not ok:
            if invocation.cancelled:
                raise InvocationCancelled("cancelled")
            raise InvocationError(_text(values[0]))
        value, outputs = [*values, None, None][:2]
        budget = Budget(call)  # the function's results may cost what its inputs did
        named = _from_lua(outputs, budget) if outputs is not None else {}
        if not isinstance(named, dict):
            raise InvocationError(f"{script.name}: the second return value must be a table")
        named["$return"] = _from_lua(value, budget)
        return InvocationResult(
            outputs={
                name: _http(v) if name in script.http else v
                for name, v in named.items()
                if v is not None
            }
        )

    def _prepare(self, script: Script, call: Call) -> tuple[Any, Any]:
        """A fresh sandboxed interpreter (kept in `call`) with the script's function in it;
        returns the trusted ``run`` and the function. Lua code runs only inside ``run``, with
        the memory cap on; everything else here runs with it lifted."""
        runtime = call.runtime = lupa.LuaRuntime(
            encoding=None,  # Lua strings are bytes; we decode them ourselves
            unpack_returned_tuples=True,
            register_eval=False,
            register_builtins=False,
            max_memory=MAX_MEMORY,
            attribute_filter=_no_attributes,  # Lua code never reaches into Python objects
        )
        call.lift()

        # The callbacks: Lua reaches them through `bridge`, so they run uncapped and must
        # neither raise nor allocate Lua memory beyond `Budget`.
        def emit(level: bytes, message: bytes, length: int) -> None:
            more = (
                f" [{length - len(message)} more bytes not logged]" if length > len(message) else ""
            )
            script.log.log(LEVELS.get(level, logging.INFO), _text(message) + more)

        def decode(text: Any) -> tuple[Any, bytes | None]:
            if not isinstance(text, bytes):
                return _failed("json.decode expects a string")
            if len(text) > JSON_LIMIT:
                return _failed(f"json.decode: text over {JSON_LIMIT} bytes (LUA_MAX_MEMORY_MB / 8)")
            try:
                return _to_lua(call.runtime, json.loads(text), Budget(call)), None
            except (ValueError, RecursionError) as exc:
                return _failed(f"json.decode: {exc}")
            except InvocationError as exc:
                return _failed(f"json.decode: {exc}")

        def encode(value: Any) -> tuple[bytes | None, bytes | None]:
            try:
                return json.dumps(_from_lua(value, Budget(call))).encode(), None
            except (InvocationError, ValueError) as exc:
                return _failed(f"json.encode: {exc}")

        load = runtime.globals().load
        sandbox = load(SANDBOX_SOURCE, b"=sandbox")  # named for tracebacks
        reasons = runtime.table_from({k: v.encode() for k, v in REASONS.items()})
        env, run = sandbox(call, reasons, emit, self._read_module, HOOK_INTERVAL, decode,
                           encode, call.lift, call.restore, LOG_LIMIT)  # fmt: skip
        chunk, error = (*_tuple(load(script.source, script.chunk_name, b"t", env)), None)[:2]
        if chunk is None:
            raise InvocationError(_text(error))
        try:
            ok, function = (*_tuple(run(chunk)), None)[:2]
        except lupa.LuaError as exc:
            raise InvocationError(_text(exc)) from None
        finally:
            call.lift()
        if not ok:
            raise InvocationError(_text(function))
        if lupa.lua_type(function) != "function":
            raise InvocationError("the chunk must return a function")
        return run, function

    def _read_module(self, name: Any) -> tuple[bytes | None, bytes | None]:
        if not isinstance(name, bytes) or not MODULE_NAME.match(name):
            return _failed("module names are dotted Lua identifiers")
        path = self.lib.joinpath(*name.decode().split(".")).with_suffix(".lua")
        try:
            return path.read_bytes(), None
        except OSError:
            return _failed(f"module {name.decode()!r} not found in {self.lib}")


class Budget:
    """What converting values between Lua and Python may cost: about LUA_MAX_MEMORY_MB of
    objects, and no time after a cancel or timeout. Without it a few shared subtables
    (``t = {t, t}`` twenty times) expand to gigabytes on the Python side."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.left = MAX_MEMORY
        self.count = 0

    def spend(self, size: int) -> None:
        self.left -= size + 64  # a rough cost of one object, on either side
        self.count += 1
        if self.left < 0:
            raise InvocationError(
                f"the value is too large (over LUA_MAX_MEMORY_MB, {MAX_MEMORY >> 20} MiB)"
            )
        if self.count % 4096 == 0 and (why := self.call.reason()) is not None:
            raise InvocationError(why)


def _failed(message: str) -> tuple[None, bytes]:
    """A callback's error, for `bridge` (a Python str would reach Lua as a Python object)."""
    return None, message.encode()


def _no_attributes(obj: Any, name: Any, setting: bool) -> Any:
    raise AttributeError("Python attributes are not available to Lua functions")


def _tuple(values: Any) -> tuple[Any, ...]:
    """Lua's return values as a tuple (lupa gives a lone value as itself)."""
    return values if isinstance(values, tuple) else (values,)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _to_lua(runtime: Any, value: Any, budget: Budget, depth: int = 0) -> Any:
    """Python (JSON-shaped, HttpRequest, bytes) -> Lua; None in a table leaves a hole."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        budget.spend(len(value))
        return value
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > MAX_DEPTH:
        raise InvocationError("input nested too deeply")
    if isinstance(value, HttpRequest):
        value = {"method": value.method, "url": value.url, "headers": value.headers,
                 "query": value.query, "params": value.params, "body": value.body}  # fmt: skip
    budget.spend(0)
    table = runtime.table()
    if isinstance(value, list | tuple):
        for index, item in enumerate(value, 1):
            table[index] = _to_lua(runtime, item, budget, depth + 1)
    elif hasattr(value, "items"):
        for key, item in value.items():
            table[_to_lua(runtime, key, budget, depth + 1)] = _to_lua(
                runtime, item, budget, depth + 1
            )
    else:
        return None  # what the host sent but Lua cannot hold (e.g. model binding data)
    return table


def _from_lua(value: Any, budget: Budget, depth: int = 0) -> Any:
    """Lua -> JSON-shaped Python: a table with keys 1..n is a list, any other a dict.

    Raw access only (``items()`` is ``next``; no ``#``, no ``tostring``): a metamethod here
    would run Lua code outside the sandbox's `run`, with the memory cap lifted."""
    if isinstance(value, bytes):
        budget.spend(len(value))
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value  # binary data stays bytes
    if value is None or isinstance(value, bool | int | float):
        return value
    kind = lupa.lua_type(value)
    if kind != "table":
        raise InvocationError(f"cannot return a Lua {kind} to the host")
    if depth > MAX_DEPTH:
        raise InvocationError("result nested too deeply (or a table contains itself)")
    budget.spend(0)
    items = []
    for key, item in value.items():
        if not isinstance(key, bytes | int | float | bool):
            raise InvocationError(
                f"table keys must be strings or numbers, not a {lupa.lua_type(key)}"
            )
        items.append((key, item))
    if (
        all(isinstance(k, int) and not isinstance(k, bool) for k, _ in items)
        and {k for k, _ in items} == set(range(1, len(items) + 1))
        and items
    ):
        return [_from_lua(v, budget, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
    return {_text(k): _from_lua(v, budget, depth + 1) for k, v in items}


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
