"""What a worker has imported once it is ready (StartStream sent, init answered, every
function loaded): nothing that only later messages, optional features or other parts of
workerkit need. Each of these once cost start-up time (spawn → ready, issue 18), so a test
keeps them from coming back with a top-level import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import arun, eventually

from workerkit.testing import TestHost, binding

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "python"
APP = EXAMPLE / "app"

#: Runs a worker script as the host would (``python worker.py <host argv>``), plus a thread
#: that writes the names in `sys.modules` to a file once a trigger file appears: a snapshot
#: of the idle, ready worker, taken without any message that could import more.
LAUNCHER = textwrap.dedent(
    """
    import json, os, runpy, sys, threading, time
    trigger, out, script = sys.argv[1:4]
    del sys.argv[1:4]
    sys.argv[0] = script
    sys.path.insert(0, os.path.dirname(script))
    def snapshot():
        while not os.path.exists(trigger):
            time.sleep(0.01)
        with open(out + ".tmp", "w") as f:
            json.dump(sorted(sys.modules), f)
        os.replace(out + ".tmp", out)
    threading.Thread(target=snapshot, daemon=True).start()
    runpy.run_path(script, run_name="__main__")
    """
)

#: Not imported before ready, with what pulls each in.
NOT_BEFORE_READY = {
    "betterproto2": "the generated messages: only for messages the hand-written codec skips",
    "workerkit._generated": "the same",
    "google.protobuf": "betterproto2's well-known types",
    "dateutil": "the same",
    "importlib.metadata": "betterproto2 reading its own version",
    "email": "an HTTP cookie's expires date (httpbody.set_cookie)",
    "aiohttp": "HTTP streaming's server, only with WORKERKIT_HTTP_STREAMING",
    "workerkit._runtime.httpproxy": "the same",
    "workerkit._runtime.proxymatch": "the same",
    "uvloop": "only with WORKERKIT_UVLOOP",
    "workerkit.emulator": "workerkit host, not a worker",
    "workerkit._hostside": "the host side of the protocol",
    "workerkit.testing": "tests",
    "workerkit.conformance": "workerkit conformance",
    "workerkit.scaffold": "workerkit new",
    "argparse": "a worker's argv is read by workerkit.cli",
    "shlex": "quoting paths in the message of a worker run by hand (workerkit.cli)",
}


def offenders(modules: list[str]) -> dict[str, str]:
    return {
        name: why
        for name in modules
        for prefix, why in NOT_BEFORE_READY.items()
        if name == prefix or name.startswith(prefix + ".")
    }


def ready_modules(tmp_path: Path, script: Path, cwd: Path) -> list[str]:
    """`script` started by a TestHost, initialised and every function of the app in `cwd`
    loaded as the host loads them from their function.json; the modules it has imported
    then."""
    functions = sorted(p.parent.name for p in cwd.glob("*/function.json"))
    assert functions
    trigger, out = tmp_path / "go", tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERKIT_")}

    async def scenario() -> None:
        async with TestHost() as host:
            command = [sys.executable, "-c", LAUNCHER, str(trigger), str(out), str(script)]
            process = await host.spawn(command, cwd=cwd, env=env)
            conn = process.connection
            assert conn is not None
            init = await conn.init(
                function_app_directory=str(cwd), worker_directory=str(script.parent)
            )
            assert init.result.status == 1, init
            for name in functions:
                config = json.loads((cwd / name / "function.json").read_text())
                bindings = {
                    b["name"]: binding(b["type"], b["direction"]) for b in config["bindings"]
                }
                loaded = await conn.load_function(
                    name,
                    bindings=bindings,
                    script_file=str(cwd / name / config["scriptFile"]),
                    entry_point=config.get("entryPoint", ""),
                    directory=str(cwd / name),
                )
                assert loaded.ok, loaded
            trigger.touch()
            eventually(out.exists, "the worker's module snapshot", timeout=30)
            await conn.terminate()
            assert await process.wait(30) == 0

    arun(scenario())
    return list(json.loads(out.read_text()))


def test_the_python_example_is_ready_without_importing_what_later_messages_need(
    tmp_path: Path,
) -> None:
    modules = ready_modules(tmp_path, EXAMPLE / "worker.py", APP)
    assert "workerkit._runtime.session" in modules  # the snapshot is of a running worker
    assert offenders(modules) == {}


def test_importing_workerkit_imports_none_of_them() -> None:
    code = "import json, sys, workerkit; print(json.dumps(sorted(sys.modules)))"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert offenders(json.loads(found.stdout)) == {}
