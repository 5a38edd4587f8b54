"""A worker for the emulator tests; behaviour chosen by function name (run as a subprocess).

Environment (set through the app's local.settings.json, which the emulator passes on):
``WK_CAPS`` JSON object of capabilities to add (an empty value removes one);
``WK_INDEX`` JSON list of functions to report when the host asks (worker indexing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import betterproto2

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    FunctionMetadata,
    HttpCookie,
    HttpResponse,
    InitRequest,
    InitResult,
    Invocation,
    InvocationResult,
    MetadataRequest,
)

log = logging.getLogger("emulator.worker")
log.setLevel(logging.INFO)


def _kind(data: Any) -> str:
    if data is None:
        return "absent"
    return betterproto2.which_one_of(data, "data")[0] or "empty"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.decode(errors="replace")}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


class EmulatorWorker(workerkit.Worker):
    runtime_name = "emulated"

    def on_init(self, request: InitRequest) -> InitResult:
        return InitResult(capabilities=json.loads(os.environ.get("WK_CAPS") or "{}"))

    def on_functions_metadata(self, request: MetadataRequest) -> list[FunctionMetadata] | None:
        listed = os.environ.get("WK_INDEX")
        if listed is None:
            return None
        return [
            FunctionMetadata(
                name=f["name"],
                script_file=f.get("scriptFile", "worker.py"),
                bindings=f["bindings"],
                directory=request.function_app_directory,
            )
            for f in json.loads(listed)
        ]

    def on_function_load(self, function: FunctionInfo) -> None:
        if function.name.startswith("broken"):
            raise FunctionLoadError(f"cannot load {function.name}: no such module")

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name.split("-")[0]  # echo-items runs fn_echo
        handler = getattr(self, "fn_" + name, None)
        if handler is None:
            return await self.fn_record(invocation)
        return await handler(invocation)

    # HTTP -----------------------------------------------------------------------------------
    async def fn_echo(self, invocation: Invocation) -> Any:
        raw = invocation.raw_inputs["req"].http
        request = invocation.inputs["req"]
        assert raw is not None
        seen = {
            "method": request.method,
            "url": request.url,
            "headers": dict(request.headers),
            "query": dict(request.query),
            "params": dict(request.params),
            "body": request.body.decode(errors="replace"),
            "body_kind": _kind(raw.body),
            "raw_body_kind": _kind(raw.raw_body),
            "plain_maps": sorted(k for k in ("headers", "query", "params") if getattr(raw, k)),
            "nullable_maps": sorted(
                k for k in ("headers", "query", "params") if getattr(raw, "nullable_" + k)
            ),
            "metadata": sorted(invocation.trigger_metadata),
            "cwd": os.getcwd(),
            "env": {
                k: os.environ.get(k)
                for k in (
                    "FUNCTIONS_WORKER_RUNTIME",
                    "FUNCTIONS_WORKER_DIRECTORY",
                    "FUNCTIONS_APPLICATION_DIRECTORY",
                    "WK_SETTING",
                )
            },
        }
        log.info("echo %s %s", request.method, request.url)
        return HttpResponse.from_json(seen)

    async def fn_respond(self, invocation: Invocation) -> Any:
        query = invocation.inputs["req"].query
        body: bytes | str = query.get("body", "")
        if query.get("bytes"):
            body = bytes(range(256))
        return HttpResponse(
            status_code=int(query.get("status", "200")),
            body=body,
            headers={
                "x-custom": "yes",
                **({"content-type": query["type"]} if "type" in query else {}),
            },
            cookies=[
                HttpCookie("session", "a b", path="/api", http_only=True, same_site="lax"),
                HttpCookie("plain", "1"),
            ],
        )

    async def fn_object(self, invocation: Invocation) -> Any:
        # A dict for the http output: the host sniffs it (a "body" key makes a response).
        if invocation.inputs["req"].query.get("describe"):
            return {"body": "described", "statusCode": 201, "headers": {"x-described": "1"}}
        return {"a": [1, 2], "b": "text"}

    async def fn_fail(self, invocation: Invocation) -> Any:
        raise RuntimeError("the function failed on purpose")

    async def fn_slow(self, invocation: Invocation) -> Any:
        query = invocation.inputs["req"].query
        if "until" in query:  # a file: run until the test creates it
            while not os.path.exists(query["until"]):
                await asyncio.sleep(0.01)
            return HttpResponse(body="released")
        seconds = float(query.get("seconds", "1"))
        await asyncio.sleep(seconds)
        return HttpResponse(body=f"slept {seconds}")

    async def fn_crash(self, invocation: Invocation) -> Any:
        log.info("crashing now")
        await asyncio.sleep(0.05)  # let the log reach the host
        os._exit(3)

    async def fn_linger(self, invocation: Invocation) -> Any:
        """Leaves what outlives a stream: an exit handler that never returns (it prints a line
        first) and a child process in the worker's process group; then runs until the file
        named by ``?until`` exists."""
        import atexit
        import subprocess
        import sys
        import time

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

        def linger() -> None:
            print("lingering after the stream ended", flush=True)
            time.sleep(600)

        atexit.register(linger)
        log.info("linger: worker pid %d, child pid %d", os.getpid(), child.pid)
        until = invocation.inputs["req"].query["until"]
        while not os.path.exists(until):
            await asyncio.sleep(0.01)
        return HttpResponse(body="released")

    async def fn_exit0(self, invocation: Invocation) -> Any:
        os._exit(0)

    async def fn_nobody(self, invocation: Invocation) -> Any:
        return HttpResponse(status_code=204, body=b"")

    # other triggers ------------------------------------------------------------------------
    async def fn_record(self, invocation: Invocation) -> Any:
        trigger = next(iter(invocation.raw_inputs))
        value = invocation.inputs[trigger]
        log.info(
            "RECORD %s",
            json.dumps(
                {
                    "function": invocation.function.name,
                    "kind": _kind(invocation.raw_inputs[trigger]),
                    "value": _plain(value),
                    "metadata": {k: _plain(v) for k, v in invocation.trigger_metadata.items()},
                    "inputs": sorted(invocation.inputs),
                },
                sort_keys=True,
            ),
        )
        outputs = [b.name for b in invocation.function.bindings.values() if b.is_output]
        if outputs:
            return InvocationResult(outputs={name: f"forwarded {value!r}" for name in outputs})
        return None


if __name__ == "__main__":
    EmulatorWorker.main()
