"""Workers used by several tests; each exercises a different part of the hook contract."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Any

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    FunctionMetadata,
    HttpResponse,
    InitRequest,
    InitResult,
    Invocation,
    InvocationResult,
    MetadataRequest,
)

user_log = logging.getLogger("tests.user")
user_log.setLevel(logging.DEBUG)


class Scenarios(workerkit.Worker):
    """Behaviour chosen by function name, so one worker covers many cases."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded: dict[str, FunctionInfo] = {}
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.cancelled: list[str] = []
        self.reloads: list[tuple[str, str]] = []
        self.shutdowns: list[workerkit.Shutdown] = []

    def on_init(self, request: InitRequest) -> InitResult:
        return InitResult(capabilities={"CustomThing": "yes"}, custom_properties={"k": "v"})

    def on_function_load(self, function: FunctionInfo) -> None:
        if function.name.startswith("broken"):
            raise FunctionLoadError(f"cannot load {function.name}: no such module")
        if function.name == "crashing-load":
            raise ZeroDivisionError("division by zero in user load code")
        self.loaded[function.function_id] = function

    async def on_invocation(self, invocation: Invocation) -> Any:
        handler = getattr(self, "fn_" + invocation.function.name.replace("-", "_"))
        return await handler(invocation)

    # async functions -----------------------------------------------------------------------
    async def fn_modules(self, invocation: Invocation) -> Any:
        """Whether betterproto2 has been imported in this process (workerkit._wire.pb)."""
        user_log.warning("checking the modules")
        return {"betterproto2": "betterproto2" in sys.modules}

    async def fn_echo(self, invocation: Invocation) -> Any:
        request = invocation.inputs["req"]
        return HttpResponse(body=request.body, headers={"x-echo": "1"})

    async def fn_value(self, invocation: Invocation) -> Any:
        return invocation.inputs.get("value")

    async def fn_outputs(self, invocation: Invocation) -> Any:
        return InvocationResult(
            return_value={"ok": True}, outputs={"queueOut": "message", "blobOut": b"\x00\x01"}
        )

    async def fn_bad_output(self, invocation: Invocation) -> Any:
        return InvocationResult(outputs={"nosuch": 1})

    async def fn_unsendable(self, invocation: Invocation) -> Any:
        return {1, 2, 3}

    async def fn_big(self, invocation: Invocation) -> Any:
        return "x" * int(invocation.inputs["size"])

    async def fn_raises(self, invocation: Invocation) -> Any:
        raise RuntimeError("user code failed")

    async def fn_exits(self, invocation: Invocation) -> Any:
        raise SystemExit(3)

    async def fn_interrupts(self, invocation: Invocation) -> Any:
        raise KeyboardInterrupt

    async def fn_logs(self, invocation: Invocation) -> Any:
        user_log.info("first line")
        logging.getLogger("workerkit.test").warning("an sdk line")
        try:
            raise ValueError("logged failure")
        except ValueError:
            user_log.exception("with traceback")
        await asyncio.sleep(0)
        user_log.debug("debug line")
        return "logged"

    async def fn_wait(self, invocation: Invocation) -> Any:
        self.started.release()
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append(invocation.invocation_id)
            raise
        return "released"

    async def fn_stubborn(self, invocation: Invocation) -> Any:
        """Swallows every cancellation (a catch-all ``except BaseException``) until `release`
        is set, then returns a value anyway."""
        self.started.release()
        while not self.release.is_set():
            try:
                await asyncio.sleep(0.01)
            except BaseException:  # the point of this function
                self.cancelled.append(invocation.invocation_id)
        return "finished anyway"

    async def fn_sleep(self, invocation: Invocation) -> Any:
        user_log.info("sleeping")  # tests wait for this line: the invocation is running
        await asyncio.sleep(float(invocation.inputs["seconds"]))
        return invocation.inputs["seconds"]

    async def fn_env(self, invocation: Invocation) -> Any:
        return {"value": os.environ.get("WK_TEST"), "cwd": os.getcwd()}


class SyncScenarios(Scenarios):
    """The same, with plain-def hooks that run in the pool."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()

    def on_invocation(self, invocation: Invocation) -> Any:  # type: ignore[override]
        name = invocation.function.name
        if name == "block":
            self.started.release()
            invocation.wait_cancelled(timeout=30)
            if not self.release.is_set() and invocation.cancelled:
                self.cancelled.append(invocation.invocation_id)
            return "unblocked"
        if name == "thread-logs":
            user_log.info("from %s", threading.current_thread().name)
            return threading.current_thread().name
        if name == "exits":
            sys.exit(4)
        if name == "quick":
            return invocation.inputs.get("value")
        if name == "gated":
            self.started.release()
            if not self.gate.wait(timeout=60):
                raise TimeoutError("the test never opened the gate")
            return "through"
        if name == "slow":
            user_log.info("sleeping")
            time.sleep(float(invocation.inputs["seconds"]))
            return "slow done"
        raise LookupError(f"no scenario {name}")

    def on_environment_reload(self, reload: workerkit.EnvironmentReload) -> None:
        self.reloads.append((os.environ.get("WK_TEST", ""), os.getcwd()))

    def on_shutdown(self, shutdown: workerkit.Shutdown) -> None:
        self.shutdowns.append(shutdown)


class Indexing(workerkit.Worker):
    """Worker indexing: lists its functions, including one the host must reject."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[FunctionInfo] = []
        self.index_calls = 0

    def on_functions_metadata(self, request: MetadataRequest) -> list[FunctionMetadata]:
        self.index_calls += 1
        http = [
            {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]},
            {"type": "http", "direction": "out", "name": "$return"},
        ]
        return [
            FunctionMetadata(name="hello", script_file="hello.fn", bindings=http),
            FunctionMetadata(
                name="Bad_binding",
                script_file="x.fn",
                bindings=[
                    {"type": "httpTrigger", "direction": "in", "name": "my_req"},
                ],
            ),
            FunctionMetadata(name="no-trigger", script_file="", bindings=[]),
        ]

    def on_function_load(self, function: FunctionInfo) -> None:
        self.loads.append(function)

    def on_invocation(self, invocation: Invocation) -> Any:
        indexed = invocation.function.indexed
        return indexed.script_file if indexed else None


class Tolerant(workerkit.Worker):
    """For fuzzing: loads any function whose name has no 'x'; answers with its input names."""

    def on_function_load(self, function: FunctionInfo) -> None:
        if "x" in function.name:
            raise FunctionLoadError("names with x are refused")

    async def on_invocation(self, invocation: Invocation) -> Any:
        return sorted(invocation.inputs)


class Flood(workerkit.Worker):
    """Echo, payload generator and log flood, for load and backpressure scenarios."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unblock = threading.Event()

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        if name == "echo":
            return invocation.inputs.get("value")
        if name == "payload":
            return "p" * int(invocation.inputs["size"])
        if name == "chatty":
            for i in range(int(invocation.inputs["lines"])):
                user_log.info("line %d", i)
            return "said"
        if name == "blocker":  # blocks the loop on purpose, until `unblock` is set
            if not self.unblock.wait(timeout=float(invocation.inputs["seconds"])):
                return "timed out"
            return "unblocked"
        raise LookupError(name)


class Chatty(workerkit.Worker):
    """Plain-def hooks: logs from worker threads, an exit handler, deep JSON."""

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        if name == "flood":
            for i in range(int(invocation.inputs["lines"])):
                user_log.info("line %d", i)
            return "flooded"
        if name == "echo":
            return invocation.inputs.get("value")
        if name == "exit-handler":
            import atexit
            from pathlib import Path

            marker = Path(invocation.inputs["path"])
            atexit.register(marker.write_text, "ran")
            return "registered"
        if name == "stuck":
            user_log.info("stuck")
            time.sleep(3600)
        raise LookupError(name)


class ToThread(workerkit.Worker):
    """An async hook stuck in `asyncio.to_thread` (the loop's default executor)."""

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        user_log.info("stuck in a thread")
        await asyncio.to_thread(time.sleep, 3600)
        return "never"


class Stubborn(workerkit.Worker):
    """An async hook that swallows every cancellation (a catch-all `except BaseException`)."""

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        user_log.info("refusing to stop")
        while True:
            try:
                await asyncio.sleep(3600)
            except BaseException:  # the point of this worker
                pass
