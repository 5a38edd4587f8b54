"""The `Worker` base class: the only code a language author writes is a subclass of it."""

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._types import (
    EnvironmentReload,
    FunctionInfo,
    FunctionMetadata,
    InitRequest,
    InitResult,
    Invocation,
    MetadataRequest,
    Shutdown,
    Warmup,
)
from .cli import HostArgs, parse_host_args_or_exit

__all__ = ["Worker", "WorkerOptions", "run"]

#: Every hook name; a method whose name is a near miss of one is refused (`hook_misspelled`).
HOOKS: frozenset[str] = frozenset(
    {
        "on_init",
        "on_functions_metadata",
        "on_function_load",
        "on_invocation",
        "on_cancel",
        "on_environment_reload",
        "on_warmup",
        "on_shutdown",
    }
)
_ABSTRACT = ("on_function_load", "on_invocation")
# A hook name, lower-cased, without underscores and its "on": how near misses are compared.
_KEYS: dict[str, str] = {hook.replace("_", "")[2:]: hook for hook in HOOKS}
# Endings that make another form of the same word (invocations, cancelled, reloaded).
_ENDINGS = ("s", "d", "ed", "led", "ing", "ling")
# Forms of a hook's word that no typo or ending explains.
_WORD_FORMS: dict[str, str] = {
    **dict.fromkeys(("invoke", "invokes", "invoked", "invoking"), "on_invocation"),
    **dict.fromkeys(("initialize", "initialise", "initialization"), "on_init"),
    **dict.fromkeys(("cancellation", "cancelation"), "on_cancel"),
}


def hook_misspelled(name: str) -> str | None:
    """The hook that method `name` looks like a misspelling of, or None.

    Lower-cased, without underscores and without the leading ``on``, a near miss is: the
    hook's own name (``onInvocation``, ``on_shut_down``, ``oninvocation``); or, for names
    that start with ``on_`` or ``onX``, the hook's name with a word ending
    (``on_invocations``, ``on_cancelled``, ``on_function_loaded``); another form of its word
    (``on_invoke``, ``on_initialize``); or one typo away, two for names of eight letters or
    more (``on_invokation``, ``on_function_metadata``). Anything else (``on_row``,
    ``on_message_parsed``, ``on_invocation_done``) is left alone as the author's own, as is
    any name that starts with ``_``.
    """
    if name in HOOKS or name.startswith("_"):
        return None
    squashed = name.lower().replace("_", "")
    key = squashed[2:]
    if squashed[:2] == "on" and key in _KEYS:  # also "oninvocation"
        return _KEYS[key]
    if len(name) < 3 or name[:2].lower() != "on" or not (name[2] == "_" or name[2].isupper()):
        return None  # "once", "only_init": not shaped like a hook name
    if key in _WORD_FORMS:
        return _WORD_FORMS[key]
    for hook_key, hook in _KEYS.items():
        if key == hook_key or (key.startswith(hook_key) and key[len(hook_key) :] in _ENDINGS):
            return hook
    for hook_key, hook in _KEYS.items():
        if _typos(key, hook_key, 2 if len(hook_key) >= 8 else 1):
            return hook
    return None


def _typos(a: str, b: str, most: int) -> bool:
    """Whether `a` is at most `most` typos from `b` (each an insertion, deletion,
    substitution or swap of neighbours: the optimal string alignment distance)."""
    if abs(len(a) - len(b)) > most:
        return False
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[len(b)] <= most


def _missing_hooks(cls: type["Worker"]) -> list[str]:
    return [name for name in _ABSTRACT if getattr(cls, name) is getattr(Worker, name)]


def _must_implement(cls: type["Worker"], missing: list[str]) -> TypeError:
    own = sorted(
        name
        for name in dir(cls)
        if name.startswith("on_") and name not in HOOKS and callable(getattr(cls, name))
    )
    also = ""
    if own:
        verdict = "is not a hook name" if len(own) == 1 else "are not hook names"
        also = f"; its {', '.join(own)} {verdict}"
    return TypeError(
        f"{cls.__qualname__} must implement {' and '.join(missing)} "
        f"(see the workerkit.Worker docstring){also}"
    )


def ready_options(worker: "Worker") -> "WorkerOptions":
    """The options of `worker`, checked to be ready to serve: it implements the abstract
    hooks, and its ``__init__`` ran `Worker.__init__`."""
    cls = type(worker)
    missing = _missing_hooks(cls)
    if missing:
        raise _must_implement(cls, missing)
    options = worker.__dict__.get("options")
    if options is None:
        raise TypeError(
            f"{cls.__qualname__}.__init__ does not call Worker.__init__: add"
            " `super().__init__()` to it (or `super().__init__(options=WorkerOptions(...))`)"
        )
    if not isinstance(options, WorkerOptions):
        raise TypeError(
            f"{cls.__qualname__}.options must be a workerkit.WorkerOptions, not {options!r}"
        )
    return options


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"environment variable {name}={value} must be at least 1")
    return value


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"environment variable {name}={text} must be a number of seconds > 0")
    return value


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Tuning knobs, each with a safe default.

    `max_in_flight`: invocations running at once; further ones wait in arrival order
    (default ``WORKERKIT_MAX_IN_FLIGHT`` or 256). `max_queued`: invocations waiting for a
    slot; beyond that the worker stops reading from the host until one finishes, so HTTP/2
    flow control holds the host back and memory stays bounded (default
    ``WORKERKIT_MAX_QUEUED`` or 1024; while reading is paused, status and cancel requests
    wait too). `threads`: size of the pool that runs
    plain-``def`` hooks (default ``WORKERKIT_THREADS`` or 32). `shutdown_grace`: seconds to
    drain on SIGTERM/SIGINT (the host's `WorkerTerminate` carries its own). `send_queue`:
    messages buffered towards the host before replies wait and log records are dropped.
    `loop_block_warning`: seconds an ``async def`` hook may block the event loop before the
    worker reports it with the function's name (0: never).

    HTTP streaming through the host's proxy (the host forwards each HTTP-trigger request to
    the worker's own HTTP server, ``HttpUri``; needs ``workerkit[http]``): `http_streaming`
    True or False turns it on or off; None (the default) follows the app setting
    ``WORKERKIT_HTTP_STREAMING=true`` in the environment the host gives the worker, at init
    and again after an environment reload. `http_match_timeout`: seconds a proxied request
    waits for its `InvocationRequest` (504 after that; time in which the worker does not
    read from the host, its backlog full, is not counted) and an invocation for its proxied
    request (a Failure after that); once both are there only the function's own limits apply.
    ``WORKERKIT_HTTP_MATCH_TIMEOUT`` or 60 s by default: the host starts forwarding before it
    sends the invocation, so they normally meet within milliseconds, and the host's proxy
    itself gives up after 240 s of silence. `http_body_prefetch`: request bodies with a
    Content-Length up to this many bytes are read before ``on_invocation`` runs, so
    `HttpRequest.body` works as without streaming; larger and chunked ones are streamed
    (`HttpRequest.stream`).
    """

    max_in_flight: int = field(default_factory=lambda: _env_int("WORKERKIT_MAX_IN_FLIGHT", 256))
    max_queued: int = field(default_factory=lambda: _env_int("WORKERKIT_MAX_QUEUED", 1024))
    threads: int = field(default_factory=lambda: _env_int("WORKERKIT_THREADS", 32))
    shutdown_grace: float = 5.0
    send_queue: int = 1024
    #: Warn (naming the function) when an async hook blocks the event loop this many
    #: seconds; 0 turns the watchdog off.
    loop_block_warning: float = 1.0
    #: HTTP streaming: True/False, or None to follow ``WORKERKIT_HTTP_STREAMING``.
    http_streaming: bool | None = None
    #: Seconds a proxied request and its invocation wait for each other.
    http_match_timeout: float = field(
        default_factory=lambda: _env_seconds("WORKERKIT_HTTP_MATCH_TIMEOUT", 60.0)
    )
    #: Request bodies up to this many bytes (by Content-Length) are read before the hook.
    http_body_prefetch: int = 1 << 20
    #: Report ``WorkerOpenTelemetryEnabled`` (the app exports its own telemetry): True/False,
    #: or None to follow ``WORKERKIT_ENABLE_OPENTELEMETRY``. With ``workerkit[otel]``
    #: installed, hooks run in the host's trace either way.
    opentelemetry: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_queued", "threads", "send_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WorkerOptions.{name} must be a whole number >= 1, not {value!r}")
        if not self.loop_block_warning >= 0:
            raise ValueError(
                f"WorkerOptions.loop_block_warning must be >= 0, not {self.loop_block_warning}"
            )
        if not self.shutdown_grace >= 0:
            raise ValueError(
                f"WorkerOptions.shutdown_grace must be >= 0, not {self.shutdown_grace}"
            )
        if self.http_streaming not in (None, True, False):
            raise ValueError(
                "WorkerOptions.http_streaming must be True, False or None (follow the"
                f" WORKERKIT_HTTP_STREAMING setting), not {self.http_streaming!r}"
            )
        if self.opentelemetry not in (None, True, False):
            raise ValueError(
                "WorkerOptions.opentelemetry must be True, False or None (follow the"
                f" WORKERKIT_ENABLE_OPENTELEMETRY setting), not {self.opentelemetry!r}"
            )
        if isinstance(self.http_match_timeout, bool) or not self.http_match_timeout > 0:
            raise ValueError(
                "WorkerOptions.http_match_timeout must be a number of seconds > 0, not"
                f" {self.http_match_timeout!r}"
            )
        prefetch = self.http_body_prefetch
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(
                f"WorkerOptions.http_body_prefetch must be a whole number >= 0, not {prefetch!r}"
            )


class Worker:
    """Base class of a language worker. Subclass it and implement two hooks.

    Every hook takes one input object and may be ``async def`` (runs on the event loop; it
    must not block) or plain ``def`` (runs in a thread pool, so the worker keeps answering
    the host meanwhile). An awaitable that a plain ``def`` returns (as a decorator's
    wrapper of an ``async def`` does) is awaited on the loop. A subclass's ``__init__``
    must call ``super().__init__()``. Hooks never see the stream: they return values or
    raise, and workerkit sends exactly one reply for every request. An exception from a
    hook becomes a Failure reply with its message and stack trace; the worker keeps serving.

    A method whose name is a near miss of a hook's (``on_invoke``, ``onInvocation``,
    ``on_cancelled``; see `hook_misspelled` in ``workerkit.worker``) is a `TypeError` when
    the class is defined, as is a hook that does not take exactly one argument; helpers
    with other names (``on_row``, ``on_message_parsed``) are yours.

    Class attributes `runtime_name`, `runtime_version` and `worker_version` are reported to
    the host in `WorkerMetadata`.
    """

    runtime_name: ClassVar[str] = "workerkit"
    runtime_version: ClassVar[str] = f"{sys.version_info.major}.{sys.version_info.minor}"
    worker_version: ClassVar[str] = "0.1.0"

    #: Hooks implemented with ``async def``, and hooks the class overrides (the session
    #: skips the base class's trivial ones); filled when the subclass is defined.
    _async_hooks: ClassVar[frozenset[str]] = frozenset()
    _overridden_hooks: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if not callable(value):
                continue
            if name not in HOOKS:
                hook = hook_misspelled(name)
                if hook is not None:
                    raise TypeError(
                        f"{cls.__qualname__}.{name} is not a workerkit hook, and workerkit would"
                        f" never call it: did you mean {hook}? (A helper of your own: name it"
                        " further from the hook, e.g. with a leading underscore.)"
                    )
                continue
            params = [
                p
                for p in inspect.signature(value).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(params) != 2:
                raise TypeError(
                    f"{cls.__qualname__}.{name} must take exactly one argument besides self"
                    f" (it takes {len(params) - 1})"
                )
        # A decorator's plain-def wrapper of an async def stays a plain def: it may block or
        # run its own loop (asgiref's async_to_sync), so it runs in the pool, and the
        # coroutine it returns is awaited on the loop. `inspect.markcoroutinefunction` on a
        # wrapper (3.12+) makes it async.
        cls._async_hooks = frozenset(
            name for name in HOOKS if inspect.iscoroutinefunction(getattr(cls, name))
        )
        cls._overridden_hooks = frozenset(
            name for name in HOOKS if getattr(cls, name) is not getattr(Worker, name)
        )

    def __init__(self, *, options: WorkerOptions | None = None) -> None:
        missing = _missing_hooks(type(self))
        if missing:
            raise _must_implement(type(self), missing)
        self.options = options if options is not None else WorkerOptions()
        #: Set by the session while the worker serves (`request_restart`).
        self._restart: Callable[[str], None] | None = None

    # -- the two hooks every worker writes --------------------------------------------------
    def on_function_load(self, function: FunctionInfo) -> None:
        """Prepare `function` for invocation (import it, compile it, check its bindings).

        Called once per function id, before any invocation of it; loads of different
        functions may overlap. Raise (ideally `FunctionLoadError`) to refuse the function:
        the host is told it failed to load, its invocations fail with your message, and
        the other functions are unaffected. The return value is ignored.
        """
        raise NotImplementedError

    def on_invocation(self, invocation: Invocation) -> Any:
        """Run one invocation and return its result.

        Invocations overlap (up to `WorkerOptions.max_in_flight`). `invocation.inputs` maps
        binding names to Python values (`HttpRequest` for HTTP triggers). Return the value
        for ``$return`` (an `HttpResponse` for HTTP), or an `InvocationResult` to set named
        output bindings too. Raise to fail the invocation. On cancel, an ``async def`` hook
        is cancelled (`asyncio.CancelledError`); a plain ``def`` hook sees
        `invocation.cancelled` turn true and should return soon; either way the host is
        answered Cancelled at once.
        """
        raise NotImplementedError

    # -- optional hooks with working defaults ------------------------------------------------
    def on_init(self, request: InitRequest) -> InitResult | None:
        """The host's first request. Return extra capabilities or metadata, or None.

        The default returns None: the worker advertises what workerkit implements. Must
        finish within the host's ``initializationTimeout`` (10 s unless worker.config.json
        says otherwise). Raising answers Failure, and the host restarts the worker.
        """
        return None

    def on_functions_metadata(self, request: MetadataRequest) -> Sequence[FunctionMetadata] | None:
        """Worker indexing: list the app's functions, or return None to let the host read
        ``function.json`` files itself (the default).

        Only called when worker.config.json has ``"workerIndexing": "true"``. Function ids
        are derived from names, so restarted workers load the same ids. Invalid entries are
        reported to the host as failed functions; the valid ones still load.
        """
        return None

    def on_cancel(self, invocation: Invocation) -> None:
        """The host cancelled `invocation` (already flagged and being cancelled). The default
        does nothing; override to interrupt work workerkit cannot see (a child process)."""
        return None

    def on_environment_reload(self, reload: EnvironmentReload) -> None:
        """Specialization: the environment variables and working directory were already
        replaced by the host's; re-read settings here. The default does nothing."""
        return None

    def on_warmup(self, warmup: Warmup) -> None:
        """The host warms up a placeholder worker; do costly imports now. Default: nothing."""
        return None

    def on_shutdown(self, shutdown: Shutdown) -> None:
        """The worker is stopping (host terminate, SIGTERM or SIGINT) after in-flight
        invocations drained. Release resources; bounded by the remaining grace period."""
        return None

    def request_restart(self, reason: str) -> None:
        """Ask the host for a fresh worker process. Safe from any hook and any thread.

        For a worker that knows it can no longer serve well (a thread it cannot stop, a leak,
        a native library in a bad state): workerkit logs `reason` as an error, stops taking
        invocations, lets those in flight finish within ``WorkerOptions.shutdown_grace``,
        then exits with status 200, which the Functions host (and ``workerkit host``) takes
        as a request for a new worker rather than as a crash.

        Raises `RuntimeError` when the worker is not serving (not started, or stopped).
        """
        restart = self._restart
        if restart is None:
            raise RuntimeError("request_restart: the worker is not serving a host")
        restart(reason)

    # -- running -----------------------------------------------------------------------------
    async def serve(self, args: HostArgs) -> int:
        """Connect to the host and serve until terminated; return the exit status: 0 after
        a terminate, non-zero when the stream ended or broke (so the host restarts us)."""
        from ._runtime.session import Session

        return await Session(self, args, ready_options(self)).run()

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> None:
        """Entry point for ``if __name__ == "__main__": MyWorker.main()``."""
        run(cls, argv)


def run(worker: type[Worker] | Worker, argv: Sequence[str] | None = None) -> None:
    """Parse the host's argv, serve until terminated, and exit the process.

    Exits 0 after `WorkerTerminate`, SIGTERM or SIGINT (after draining), 200 after
    `Worker.request_restart` (after draining), 1 when the stream to the host ended or broke,
    2 for a bad command line. Run by hand without the host's arguments, or with ``--help``
    (exit 0), the worker says on stderr that a host starts it, and prints the
    ``workerkit host`` command that runs it and the arguments a host passes.
    """
    args = parse_host_args_or_exit(sys.argv[1:] if argv is None else argv)
    instance = worker() if isinstance(worker, type) else worker

    async def main() -> int:
        from ._runtime.session import Session

        loop = asyncio.get_running_loop()
        session = Session(instance, args, ready_options(instance))
        for signum in (signal.SIGTERM, signal.SIGINT):
            # Not available off the main thread or on some platforms: the host still
            # has WorkerTerminate.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(
                    signum, session.request_shutdown, signal.Signals(signum).name
                )
        return await session.run()

    code, unfinished = _run_loop(main())
    # A plain-def hook that never returns keeps a pool thread alive, and interpreter exit
    # would wait for it forever; a coroutine that ignores cancellation would run its
    # handlers for ever when collected at exit. Then leave without waiting, once exit
    # handlers have run.
    deadline = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0))
    stuck = [t for t in threading.enumerate() if t.is_alive() and not t.daemon]
    if len(stuck) > 1 or unfinished:  # the main thread and a thread that will not end
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _run_loop(main: "Coroutine[Any, Any, int]") -> tuple[int, list[asyncio.Task[Any]]]:
    """`asyncio.run(main)` with every wait on the way out bounded; returns what `main`
    returned and the tasks that would not end when cancelled (e.g. user code with a
    catch-all ``except BaseException``: asyncio.run waits for those for ever, and for the
    default executor's threads, `asyncio.to_thread`, for ever on 3.11 and 300 s later).
    Keep the tasks referenced: collecting one runs its handlers again."""
    loop = _new_loop()
    try:
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(main)
    finally:  # also when `main` raised: its tasks are cancelled all the same
        unfinished = _wind_down(loop)
    return code, unfinished


def _new_loop() -> asyncio.AbstractEventLoop:
    """asyncio's event loop, or uvloop's with ``WORKERKIT_UVLOOP=1`` when uvloop is
    installed (``workerkit[speed]``)."""
    if os.environ.get("WORKERKIT_UVLOOP", "") not in ("", "0"):
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            print(
                "LanguageWorkerConsoleLogWARNING: WORKERKIT_UVLOOP is set but uvloop is not"
                " installed (pip install 'workerkit[speed]'); using asyncio's event loop",
                file=sys.stderr,
                flush=True,
            )
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def _wind_down(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """Cancel what is left on `loop`, waiting a second at most, and close it without waiting
    for the default executor's threads; the tasks that would not end."""
    try:
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=1.0))
        loop.run_until_complete(
            asyncio.wait({loop.create_task(loop.shutdown_asyncgens())}, timeout=1.0)
        )
        return [task for task in left if not task.done()]
    finally:
        asyncio.set_event_loop(None)
        loop.close()
