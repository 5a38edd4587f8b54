"""A language worker that runs Python functions the classic way.

Each function is a folder with a ``function.json`` whose ``scriptFile`` is a Python file and
whose ``entryPoint`` (default ``main``) names a function, plain ``def`` or ``async def``. Its
parameters are bound by name: an input binding gets the input, an output binding an
``Out`` to ``set``, ``context`` the invocation's details. The return value goes to
``$return``. Alternatively, a ``function_app.py`` at the app root declares functions with
``pyfunc.FunctionApp`` decorators (worker indexing).

Everything that can be decided before a call is decided at load: the module is imported,
the entry point found and every parameter's source fixed in a plan, so a call only builds
its arguments from the plan and runs the function.

A plain ``def`` runs in a thread pool, so a function that blocks does not stop the worker.
The hop to a thread and back costs more than a small function itself, so one that keeps
returning quickly there is called on the event loop instead: after `PROMOTE_AFTER` calls in
a row that each computed under `QUICK_UNDER`, waited under `QUICK_UNDER` and returned within
`PROMOTE_WAIT`. Computed is the thread's CPU time, garbage collection left out; waited is the
time it neither computed nor left the CPU to the process's other threads computing. (Under
load a pool thread waits for the GIL far longer than a small function runs: that is not the
function's wait, and counting it kept quick functions in the pool exactly when it mattered.)
On the loop, the first call that computes, or is blocked (sleep, I/O, a lock: the thread gave
the CPU up by itself), over `PROMOTE_WAIT` sends it back to the pool for good; so does reading
``context.cancelled``: a function that waits for the host's cancel must not wait on the loop,
which cannot read it meanwhile. A call that computes longer than `DEMOTE_OVER` or waits
longer than `QUICK_UNDER`, but not that long, sends it back until it is quick in the pool
again, `RETURNS` times, then for good: a few milliseconds can also be the machine's (the GIL
held by another thread a busy machine preempted, as calls still finishing in the pool right
after a promotion; CPU time charged under heavy load), while a function that is slow on
every call is not quick in the pool and stays there. Being preempted (waiting for a CPU, from
Linux's schedstat) counts as neither; where the platform does not say whether a thread gave
the CPU up (not Linux), a call on the loop taking longer than `DEMOTE_OVER` demotes it for
good. A call on the loop that returns within `QUICK_UNDER` is over no bound: only the clock
is read after it (the CPU clocks and schedstat cost a system call each).
``PYWORKER_INLINE=0`` keeps every plain ``def`` in the pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import time
import traceback
import typing
from collections.abc import Callable, MutableSequence, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pyfunc import Context, FunctionApp, Out

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    FunctionMetadata,
    HttpResponse,
    Invocation,
    InvocationError,
    InvocationResult,
    MetadataRequest,
)

#: A plain def whose last `PROMOTE_AFTER` calls in the pool each computed under `QUICK_UNDER`
#: seconds, waited under `QUICK_UNDER` and returned within `PROMOTE_WAIT` is called on the
#: event loop from then on (no thread hop); one call on the loop that computes or is blocked
#: longer than `PROMOTE_WAIT` sends it back to the pool for good; one that computes longer
#: than `DEMOTE_OVER` or waits longer than `QUICK_UNDER` (but not that long) sends it back
#: until it is quick there again, `RETURNS` times at most.
QUICK_UNDER = 0.0005
PROMOTE_AFTER = 16
PROMOTE_WAIT = 0.02
DEMOTE_OVER = 0.002
RETURNS = 2
APP_PACKAGE = "__app__"  # function modules are imported as __app__.<folder>[.<module>]
INDEX_MODULE = "function_app"  # <app root>/function_app.py, for worker indexing
#: Import tracebacks leave out frames of the import system and of this file.
_MACHINERY = ("<frozen", os.path.dirname(importlib.__file__) + os.sep)
_HERE = os.path.abspath(__file__)
log = logging.getLogger("pyworker")
_import_lock = threading.Lock()
try:
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD  # Linux
except (ImportError, AttributeError):
    _RUSAGE_THREAD = None


#: CPU seconds each thread (by ident) has spent collecting garbage: a collection that happens
#: to run during a call (a full one can take milliseconds) is not the call's computing.
_collected: dict[int, float] = {}
_collection_began = [0.0]  # the collecting thread's CPU clock when the one under way began


def _time_collections(phase: str, info: dict[str, int]) -> None:
    # Collections never overlap: each runs in one thread, holding the GIL throughout.
    if phase == "start":
        _collection_began[0] = time.thread_time()
    else:
        ident = threading.get_ident()
        spent = time.thread_time() - _collection_began[0]
        _collected[ident] = _collected.get(ident, 0.0) + spent


_schedstat = threading.local()  # per thread: its /proc/thread-self/schedstat, opened once


def _run_delay() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (preempted), from
    Linux's schedstat; 0 where the platform does not say."""
    fd = getattr(_schedstat, "fd", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1
        _schedstat.fd = fd
    if fd < 0:
        return 0.0
    try:
        return int(os.pread(fd, 64, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


#: `_clocks()`: seconds, thread CPU, process CPU, thread CPU collecting garbage, preempted.
_Clocks = tuple[float, float, float, float, float]


def _clocks() -> _Clocks:
    """Now: seconds, this thread's CPU, the whole process's CPU, this thread's CPU spent
    collecting garbage so far, and its time preempted so far."""
    return (
        time.perf_counter(),
        time.thread_time(),
        time.process_time(),
        _collected.get(threading.get_ident(), 0.0),
        _run_delay(),
    )


def _spent(since: _Clocks) -> tuple[float, float, float, float]:
    """Since `since` (`_clocks()`, in this thread): seconds taken, seconds computed (garbage
    collection left out), seconds waited and seconds blocked. Blocked is the time this
    thread neither computed nor was preempted (waiting for a CPU); waited is that, less what
    the process's other threads computed meanwhile: a thread waiting for the GIL waits for
    one that computes, and that wait is not the function's. Another thread computing outside
    the GIL meanwhile hides as much of a real wait: blocked bounds it."""
    now, cpu, process, collected, delayed = _clocks()
    took = now - since[0]
    own = cpu - since[1]
    others = process - since[2] - own
    blocked = took - own - (delayed - since[4])
    return took, own - (collected - since[3]), blocked - others, blocked


def _voluntary_switches() -> int:
    """How often this thread has given up the CPU by itself (sleeping, waiting for I/O or a
    lock); -1 where the platform does not say."""
    if _RUSAGE_THREAD is None:
        return -1
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw  # loads run in parallel threads


# Parameter sources in a plan.
INPUT, OUTPUT, CONTEXT = 0, 1, 2


def _convert_to(annotation: Any) -> Callable[[Any], Any] | None:
    """A converter for a parameter annotated ``str``, ``bytes``, ``dict`` or ``list``."""
    annotation = typing.get_origin(annotation) or annotation
    if annotation is str:
        return lambda v: v.decode() if isinstance(v, bytes) else v
    if annotation is bytes:
        return lambda v: v.encode() if isinstance(v, str) else v
    if annotation in (dict, list):
        return lambda v: json.loads(v) if isinstance(v, str | bytes) else v
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """How to call one loaded function: resolved once, at load."""

    call: Callable[..., Any]
    is_async: bool
    #: (parameter, source, binding name, converter) for each parameter, in order
    params: tuple[tuple[str, int, str, Callable[[Any], Any] | None], ...]
    has_return: bool  # the function has a $return binding


class PythonWorker(workerkit.Worker):
    runtime_name = "pyworker"

    def __init__(self) -> None:
        super().__init__()
        self.plans: dict[str, Plan] = {}
        self.pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="function")
        self.index: dict[str, Callable[..., Any]] = {}
        #: function id -> quick calls in a row in the pool (>= PROMOTE_AFTER: called on
        #: the loop, unless in `pool_only`)
        self.streaks: dict[str, int] = {}
        #: functions that are never called on the loop (again); added to from any thread
        self.pool_only: set[str] = set()
        #: function id -> how often a slow call on the loop sent it back to the pool
        self.returns: dict[str, int] = {}
        self.inline = os.environ.get("PYWORKER_INLINE", "1") != "0"
        if self.inline and _time_collections not in gc.callbacks:
            gc.callbacks.append(_time_collections)

    # -- discovery and loading ---------------------------------------------------------------
    def on_functions_metadata(self, request: MetadataRequest) -> Sequence[FunctionMetadata] | None:
        app_dir = Path(request.function_app_directory or ".").resolve()
        script = app_dir / f"{INDEX_MODULE}.py"
        if not script.is_file():
            return None  # no decorators: the host reads function.json files
        module = _import(script, app_dir)
        found: list[FunctionMetadata] = []
        for value in vars(module).values():
            if isinstance(value, FunctionApp):
                for entry in value.functions.values():
                    self.index[entry.name] = entry.function
                    found.append(
                        FunctionMetadata(
                            name=entry.name,
                            script_file=str(script),
                            entry_point=entry.function.__name__,
                            bindings=entry.bindings,
                            directory=str(app_dir),
                        )
                    )
        return found

    def on_function_load(self, function: FunctionInfo) -> None:
        target: Callable[..., Any] | None
        if function.indexed is not None:
            target = self.index[function.indexed.name]
        else:
            script = Path(function.script_file)
            if script.suffix != ".py" or not script.is_file():
                raise FunctionLoadError(f"scriptFile {script} is not an existing .py file")
            module = _import(script, Path.cwd())  # the host starts us in the app root
            entry_point = function.entry_point or "main"
            target = getattr(module, entry_point, None)
            if target is None or not callable(target):
                raise FunctionLoadError(
                    f"{script} has no function {entry_point!r} (set entryPoint in function.json)"
                )
        self.plans[function.function_id] = _plan(function, target)

    # -- invocations -------------------------------------------------------------------------
    async def on_invocation(self, invocation: Invocation) -> Any:
        plan = self.plans[invocation.function.function_id]
        inputs = invocation.inputs
        kwargs: dict[str, Any] = {}
        outs: dict[str, Out[Any]] = {}
        for name, source, binding, convert in plan.params:
            if source == INPUT:
                value = inputs.get(binding)
                kwargs[name] = (
                    convert(value) if convert is not None and value is not None else value
                )
            elif source == OUTPUT:
                kwargs[name] = outs[binding] = Out()
            else:
                kwargs[name] = _Context(invocation, self.pool_only)
        if plan.is_async:
            result = await plan.call(**kwargs)
        elif (
            self.streaks.get(function_id := invocation.function.function_id, 0) >= PROMOTE_AFTER
            and function_id not in self.pool_only
        ):
            result = self._call_inline(invocation, plan, kwargs)
        else:
            result = await self._call_in_pool(invocation, plan, kwargs)
        if result is not None and not plan.has_return and not isinstance(result, HttpResponse):
            raise InvocationError(
                f"{invocation.function.name} returned a value but has no '$return' binding"
            )
        if not outs:
            return result
        values = {name: out.get() for name, out in outs.items() if out.get() is not None}
        return InvocationResult(return_value=result, outputs=values)

    async def _call_in_pool(
        self, invocation: Invocation, plan: Plan, kwargs: dict[str, Any]
    ) -> Any:
        """Call a plain def in the thread pool, counting how often in a row it was quick."""
        # A copy of the context carries the invocation id, so logs are attributed.
        run = contextvars.copy_context().run
        loop = asyncio.get_running_loop()
        function_id = invocation.function.function_id
        if not self.inline or function_id in self.pool_only:
            # Never called on the loop: its clocks (system calls) are not read.
            returned, result = await loop.run_in_executor(
                self.pool, run, _capture, plan.call, kwargs
            )
        else:
            returned, result, (took, computed, waited, _) = await loop.run_in_executor(
                self.pool, run, _timed, plan.call, kwargs
            )
            if function_id not in self.pool_only:  # (reading context.cancelled adds it)
                quick = computed < QUICK_UNDER and waited < QUICK_UNDER and took < PROMOTE_WAIT
                self.streaks[function_id] = self.streaks.get(function_id, 0) + 1 if quick else 0
        if not returned:
            raise result
        return result

    def _call_inline(self, invocation: Invocation, plan: Plan, kwargs: dict[str, Any]) -> Any:
        """Call a plain def that has been quick on the event loop, in the invocation's task
        (its context carries the invocation id); a slow call sends it back to the pool."""
        since, switches = _clocks(), _voluntary_switches()
        try:
            return plan.call(**kwargs)
        finally:
            # Computing and waiting are parts of the time taken: a call within QUICK_UNDER
            # is over neither bound, and the other clocks (system calls) need not be read.
            if time.perf_counter() - since[0] > QUICK_UNDER:
                self._judge_inline(invocation, since, switches)

    def _judge_inline(self, invocation: Invocation, since: _Clocks, switches: int) -> None:
        """After a call on the event loop that took over QUICK_UNDER: was it slow?"""
        took, computed, waited, blocked = _spent(since)
        # Slow because it computed, or because it waited for something: not because the
        # thread was preempted, collected garbage, or let other threads compute.
        if switches < 0:  # whether it waited is unknown here
            slow = for_good = took > DEMOTE_OVER
        else:
            switched = _voluntary_switches() != switches
            for_good = computed > PROMOTE_WAIT or (blocked > PROMOTE_WAIT and switched)
            slow = for_good or computed > DEMOTE_OVER or (waited > QUICK_UNDER and switched)
        if not slow:
            return
        function_id = invocation.function.function_id
        returns = self.returns.get(function_id, 0)
        # A few ms once can be the machine's, not the function's: a wait for the GIL held by
        # another thread the machine preempted (right after a promotion, calls still
        # finishing in the pool), CPU time charged under heavy load. The function goes back
        # to the pool until it is quick there again (one slow on every call never is),
        # RETURNS times at most.
        if for_good or returns >= RETURNS:
            self.pool_only.add(function_id)
            level, then = logging.WARNING, "it runs in the thread pool from now on"
        else:
            self.returns[function_id] = returns + 1
            self.streaks[function_id] = 0
            level = logging.INFO
            then = f"back to the thread pool until it is quick there ({returns + 1} of {RETURNS})"
        # The worker's log, not the call's: logged outside the invocation's context.
        contextvars.Context().run(
            log.log,
            level,
            "%s took %.1f ms on the event loop (computing %.1f, waiting %.1f); %s",
            invocation.function.name,
            took * 1000,
            computed * 1000,
            waited * 1000,
            then,
        )


class _Context(Context):
    """`Context` that keeps a function reading `cancelled` in the thread pool: it may wait
    for the host's cancel, which the event loop cannot read while the function runs there."""

    __slots__ = ("_pool_only",)

    def __init__(self, invocation: Invocation, pool_only: set[str]) -> None:
        super().__init__(invocation)
        self._pool_only = pool_only

    @property
    def cancelled(self) -> bool:
        """True once the host cancelled this call: long-running sync code should stop."""
        self._pool_only.add(self._invocation.function.function_id)
        return self._invocation.cancelled


def _timed(
    call: Callable[..., Any], kwargs: dict[str, Any]
) -> tuple[bool, Any, tuple[float, float, float, float]]:
    """`_capture`, and the seconds the call took, computed, waited and was blocked
    (`_spent`)."""
    since = _clocks()
    returned, result = _capture(call, kwargs)
    return returned, result, _spent(since)


def _capture(call: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """Call a plain def in the pool: (True, its result), or (False, what it raised).

    Whatever it raises is raised again by the awaiting coroutine rather than left in the
    pool's future: asyncio would throw it into the coroutine, and a thrown GeneratorExit
    closes the whole chain of awaiting coroutines instead of failing the invocation.
    """
    try:
        return True, call(**kwargs)
    except BaseException as exc:
        return False, exc


def _import(script: Path, app_dir: Path) -> ModuleType:
    """Import `script` as ``__app__.<its path under app_dir>``, so relative imports work."""
    with _import_lock:
        if APP_PACKAGE not in sys.modules:
            package = ModuleType(APP_PACKAGE)
            package.__path__ = []
            sys.modules[APP_PACKAGE] = package
        root = str(app_dir)
        package_path: MutableSequence[str] = sys.modules[APP_PACKAGE].__path__
        if root not in package_path:
            package_path.append(root)
            sys.path.append(root)  # shared code at the app root: ``import shared``
    try:
        parts = script.resolve().relative_to(app_dir.resolve()).with_suffix("").parts
    except ValueError:
        raise FunctionLoadError(f"{script} is outside the function app {app_dir}") from None
    if parts[-1] == "__init__":
        parts = parts[:-1]
    name = ".".join((APP_PACKAGE, *parts))
    try:
        return importlib.import_module(name)
    except BaseException as exc:  # sys.exit() at import too: a load failure, not an exit
        # Show the author their traceback, without the import machinery's frames.
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith(_MACHINERY) and os.path.abspath(f.filename) != _HERE
        ]
        text = "".join(traceback.format_list(frames))
        text += "".join(traceback.format_exception_only(exc))
        raise FunctionLoadError(
            f"cannot import {script}: {type(exc).__name__}: {exc}\n"
            f"Traceback (most recent call last):\n{text}"
        ) from exc


def _plan(function: FunctionInfo, target: Callable[..., Any]) -> Plan:
    """Decide, for every parameter of `target`, where its value comes from."""
    bindings = function.bindings
    params: list[tuple[str, int, str, Callable[[Any], Any] | None]] = []
    try:
        signature = inspect.signature(target, eval_str=True)
    except Exception:  # annotations that cannot be evaluated: do without them
        signature = inspect.signature(target)
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        binding = bindings.get(name)
        if binding is not None and binding.direction == "out":
            params.append((name, OUTPUT, name, None))
        elif binding is not None:
            params.append((name, INPUT, name, _convert_to(param.annotation)))
        elif name == "context":
            params.append((name, CONTEXT, "", None))
        elif param.default is param.empty:
            raise FunctionLoadError(
                f"parameter {name!r} of {function.name} matches no binding "
                f"(bindings: {', '.join(bindings) or 'none'}; 'context' is also available)"
            )
    return Plan(
        call=target,
        is_async=inspect.iscoroutinefunction(target),
        params=tuple(params),
        has_return="$return" in bindings,
    )


if __name__ == "__main__":
    # Functions log with `logging` as in Azure's Python worker: show INFO and above.
    logging.getLogger().setLevel(logging.INFO)
    PythonWorker.main()
