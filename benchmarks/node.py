"""Microsoft's official Node.js worker as a baseline, and the floor for cold starts.

The worker is not installed from anywhere: `WORKERKIT_NODE_WORKER` (or `--node-worker`)
names a checkout of Azure/azure-functions-nodejs-worker built with
``npm ci && npm run build && npm run webpack``, and ``node`` must be on PATH. It runs the
classic apps of ``apps/node`` (``function.json`` + ``index.js``, the v3 programming model
the worker bundles), started the way the host starts it: ``node dist/src/nodejsWorker.js``
and the host's arguments (its ``worker.config.json``: ``defaultExecutablePath`` and
``defaultWorkerPath``).

The cold-start floors are ``python -c pass`` and ``python -c "import asyncio, grpclib.client"``
(what any worker on asyncio and grpclib, workerkit's two foundations, loads before it can dial
the host) with the interpreter and environment the workerkit targets get: spawn to the byte the
process writes when the code has run (like ready, this leaves out the interpreter's exit),
launched in the same rounds as the workers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ENV = "WORKERKIT_NODE_WORKER"
APP = Path(__file__).resolve().parent / "apps" / "node"
#: The names the floors' figures go under, for the ratio records, and their code.
FLOOR = "python -c pass"
STACK_FLOOR = "python -c 'import asyncio, grpclib.client'"
FLOORS = {FLOOR: "pass", STACK_FLOOR: "import asyncio, grpclib.client"}


def problem(directory: Path) -> str | None:
    """Why `directory` is not a built Node.js worker that can run here (None when it is)."""
    needed = [
        directory / "worker.config.json",
        directory / "dist" / "src" / "nodejsWorker.js",
        directory / "dist" / "src" / "worker-bundle.js",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        built = "npm ci && npm run build && npm run webpack"
        return f"missing {', '.join(missing)} (build the checkout with {built})"
    if shutil.which(executable(directory)) is None:
        return f"{executable(directory)} is not on PATH"
    return None


def _config(directory: Path) -> dict[str, str]:
    config = json.loads((directory / "worker.config.json").read_text())
    description: dict[str, str] = config.get("description", {})
    return description


def executable(directory: Path) -> str:
    """The worker's `defaultExecutablePath` (``node``)."""
    return _config(directory).get("defaultExecutablePath", "node")


def command(directory: Path) -> list[str]:
    """The host's command for the worker, before its arguments."""
    worker_path = _config(directory).get("defaultWorkerPath", "dist/src/nodejsWorker.js")
    found = shutil.which(executable(directory)) or executable(directory)
    return [found, str(directory / worker_path)]


def version(directory: Path) -> str:
    """The worker's package version and the node version it runs on."""
    try:
        package = json.loads((directory / "package.json").read_text()).get("version", "unknown")
    except (OSError, ValueError):
        package = "unknown"
    return f"{package} on node {_node_version(directory)}"


def _node_version(directory: Path) -> str:
    try:
        done = subprocess.run(
            [executable(directory), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip().lstrip("v") or "unknown"


def env() -> dict[str, str]:
    """What the host sets for the node runtime (the rest comes from the shared base)."""
    return {"FUNCTIONS_WORKER_RUNTIME": "node", "AzureWebJobsScriptRoot": str(APP)}


async def floor_launch(cwd: Path, env: Mapping[str, str], code: str = "pass") -> float:
    """Spawn → ``python -c CODE`` done, in ms: the time to the byte the process writes after
    `code` ran, so that, like a worker's ready, it leaves out the interpreter's exit."""
    spawned_at = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"{code}\nimport os\nos.write(1, b'.')",
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    done = await process.stdout.read(1)
    elapsed = (time.perf_counter() - spawned_at) * 1000
    returncode = await process.wait()
    if done != b"." or returncode != 0:
        raise RuntimeError(f"python -c {code!r} exited with {returncode}")
    return elapsed


#: (label, numerator target, denominator target, figure, target bound, higher is better):
#: issue 18's targets against the Node.js worker and the floors, in `run.RATIOS`' form.
RATIOS: tuple[tuple[str, str, str, str, float | None, bool], ...] = (
    ("throughput @1 vs node", "workerkit", "node", "echo1_per_s", 1.0, True),
    ("throughput @32 vs node", "workerkit", "node", "echo32_per_s", 1.0, True),
    ("p50 @1 vs node", "workerkit", "node", "echo1_p50_ms", 1.0, False),
    ("logging: µs per line vs node", "workerkit", "node", "log_us_per_line", 1.0, False),
    (
        "minimal: worker CPU/inv @32 vs baseline 2",
        "workerkit-minimal",
        "bare-grpcio",
        "echo32_worker_cpu_us",
        1.0,
        False,
    ),
    ("throughput @128 vs node", "workerkit", "node", "echo128_per_s", None, True),
    ("worker CPU/inv @32 vs node", "workerkit", "node", "echo32_worker_cpu_us", None, False),
    ("cold start (ready) vs node", "workerkit", "node", "ready_ms", None, False),
    ("idle RSS vs node", "workerkit", "node", "rss_idle_mib", None, False),
    ("16 MiB MB/s vs node", "workerkit", "node", "payload16_mb_s", None, True),
    ("cold start (ready) vs floor, python -c pass", "workerkit", FLOOR, "ready_ms", None, False),
    ("floor (python -c pass) vs official ready", FLOOR, "official", "ready_ms", None, False),
    (
        "floor (import asyncio, grpclib.client) vs official ready",
        STACK_FLOOR,
        "official",
        "ready_ms",
        None,
        False,
    ),
)
