"""Run the template worker the way the Functions host does, and show the conversation.

    python examples/templates/demo.py

Starts a host (workerkit.testing.TestHost, a real gRPC server on 127.0.0.1), launches
worker.py as a subprocess with the host's command line in the app directory, loads the
functions described by app/*/function.json and sends a few HTTP invocations.
"""

import asyncio
import json
import sys
import uuid
from pathlib import Path

from workerkit import HttpRequest
from workerkit.convert import decode_output
from workerkit.testing import TestHost, binding

HERE = Path(__file__).resolve().parent
APP = HERE / "app"
REQUESTS = [
    ("hello", "/api/hello?name=Ada", {}),
    ("sum", "/api/sum/3/4", {"a": "3", "b": "4"}),
    ("hello", "/api/hello", {}),  # no name: the template cannot render -> 400
]


def bindings_of(function_json: Path) -> dict[str, object]:
    spec = json.loads(function_json.read_text())
    return {b["name"]: binding(b["type"], b["direction"]) for b in spec["bindings"]}


async def main() -> int:
    async with TestHost() as host:
        print(f"host listening on 127.0.0.1:{host.port}")
        worker = await host.spawn([sys.executable, str(HERE / "worker.py")], cwd=APP)
        conn = worker.connection
        assert conn is not None
        print(f"worker {conn.worker_id} opened its stream")
        init = await conn.init(function_app_directory=str(APP), worker_directory=str(HERE))
        print(f"init: {init.result.status.name}, capabilities: {', '.join(init.capabilities)}")

        ids = {}
        for function_json in sorted(APP.glob("*/function.json")):
            name = function_json.parent.name
            spec = json.loads(function_json.read_text())
            ids[name] = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
            loaded = await conn.load(
                ids[name],
                name,
                bindings=bindings_of(function_json),
                script_file=str(function_json.parent / spec["scriptFile"]),
                directory=str(function_json.parent),
            )
            print(f"load {name}: {loaded.result.status.name}")

        for name, path, params in REQUESTS:
            request = HttpRequest(
                method="GET",
                url=f"http://127.0.0.1:7071{path}",
                headers={"host": "127.0.0.1:7071"},
                query=dict(p.split("=", 1) for p in path.partition("?")[2].split("&") if p),
                params=params,
            )
            reply = await conn.invoke(ids[name], {"req": request})
            response = decode_output(reply.return_value)
            logs = [entry.message for entry in conn.logs_for(reply.invocation_id)]
            print(f"GET {path} -> {response.status_code} {response.text().strip()!r}  logs: {logs}")

        await conn.status()
        print("status: answered")
        await conn.terminate(grace_period=5)
        code = await worker.wait(10)
        print(f"terminate: worker exited with status {code}")
        return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
