"""`workerkit host` reads the configuration files as the host and Core Tools read them, and
gives the worker the environment ``func start`` gives it (issue 14, items 1, 8, 10, 12, 13).

Each test runs a real emulator (in-process, serving real HTTP on 127.0.0.1, or ``workerkit
host`` as a subprocess) with a worker written here that answers every HTTP request with its
own environment.
"""

from __future__ import annotations

import codecs
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from emulator_support import RunningEmulator

from workerkit.emulator import EmulatorError, EmulatorOptions

ENV_WORKER = """
import json
import os

import workerkit
from workerkit import HttpResponse


class EnvWorker(workerkit.Worker):
    runtime_name = "envecho"

    def on_function_load(self, function):
        pass

    async def on_invocation(self, invocation):
        body = json.dumps({"function": invocation.function.name, "env": dict(os.environ)})
        return HttpResponse(body=body, headers={"content-type": "application/json"})


if __name__ == "__main__":
    EnvWorker.main()
"""
LENIENT_WORKER_CONFIG = """{
  // read like the host reads it: comments, trailing commas, single quotes
  "description": {
    "language": "envecho",
    'extensions': [".txt",],
    "defaultExecutablePath": %s,
    "defaultWorkerPath": "worker.py",
    "arguments": ["-u"],
  },
  processOptions: {initializationTimeout: "00:00:30", processRestartInterval: "00:00:00",},
}"""
#: Strict JSON, for the tests of everything but item 1.
WORKER_CONFIG = json.dumps(
    {
        "description": {
            "language": "envecho",
            "extensions": [".txt"],
            "defaultExecutablePath": "%s",
            "defaultWorkerPath": "worker.py",
            "arguments": ["-u"],
        },
        "processOptions": {"initializationTimeout": "00:00:30"},
    }
).replace('"%s"', "%s")
HTTP_FUNCTION = json.dumps(
    {
        "scriptFile": "run.txt",
        "bindings": [
            {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "anonymous"},
            {"type": "http", "direction": "out", "name": "$return"},
        ],
    }
)
#: Microsoft's Python end-to-end apps end a binding with `"name": "$return",` and `}`.
FUNCTION_JSON = """{
  /* an HTTP function */
  "scriptFile": "run.txt",
  "bindings": [
    {
      "type": "httpTrigger",
      "direction": "in",
      "name": "req",
      'authLevel': 'anonymous',
      methods: ["get",], // any case of "get"
      "deep": %s
    },
    {
      "type": "http",
      "direction": "out",
      "name": "$return",
    }
  ]
}"""
HOST_JSON = '{"version": "2.0"}'
LOCAL_SETTINGS = '{"IsEncrypted": false, "Values": {"WK_SETTING": "from-settings"}}'
#: What Core Tools or the host set: kept out of the environment the tests start from.
CORE_TOOLS_PREFIXES = (
    "AZURE_FUNCTIONS_",
    "AzureFunctionsJobHost",
    "AzureWebJobs",
    "ASPNETCORE_",
    "FUNCTIONS_",
    "Logging__",
    "PYTHON_",
    "WEBSITE_",
    "languageWorkers",
)


def nested(depth: int) -> str:
    """JSON arrays nested `depth` deep."""
    return "[" * depth + "]" * depth


def config_text(template: str = WORKER_CONFIG) -> str:
    """worker.config.json starting the env-echo worker with this interpreter."""
    return template % json.dumps(sys.executable)


def clean_environ(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(CORE_TOOLS_PREFIXES)}
    return {**base, **extra}


def write_files(
    root: Path,
    *,
    functions: Mapping[str, bytes | str] | None = None,
    host: bytes | str = HOST_JSON,
    settings: bytes | str | None = LOCAL_SETTINGS,
    worker_config: bytes | str | None = None,
) -> tuple[Path, Path]:
    """An app (one folder per function, each with run.txt) and the env-echo worker; each
    file written exactly as given (str as UTF-8)."""

    def put(path: Path, content: bytes | str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    app, worker = root / "app", root / "worker"
    put(app / "host.json", host)
    if settings is not None:
        put(app / "local.settings.json", settings)
    for name, text in (functions or {"env": HTTP_FUNCTION}).items():
        put(app / name / "function.json", text)
        put(app / name / "run.txt", "")
    put(worker / "worker.py", ENV_WORKER)
    put(worker / "worker.config.json", worker_config or config_text())
    return app, worker


@contextmanager
def serving(
    app: Path, worker: Path, *, port: int = 0, environ: Mapping[str, str] | None = None
) -> Iterator[RunningEmulator]:
    options = EmulatorOptions(app, worker, port=port, environ=environ or clean_environ())
    running = RunningEmulator(options).start()
    try:
        assert running.start_error is None, f"{running.start_error}\n{running.output}"
        yield running
    finally:
        running.stop()


def start_error(app: Path, worker: Path) -> str:
    """The message an emulator that cannot start gives (it must not start)."""
    running = RunningEmulator(EmulatorOptions(app, worker, port=0, environ=clean_environ()))
    running.start()
    if running.start_error is None:
        running.stop()
        raise AssertionError(f"it started:\n{running.output}")
    assert isinstance(running.start_error, EmulatorError), running.start_error
    return str(running.start_error)


def environment_seen(running: RunningEmulator, path: str = "/api/env") -> dict[str, Any]:
    reply = running.request("GET", path)
    assert reply.status == 200, (reply.status, reply.text, running.output)
    env: dict[str, Any] = reply.json()["env"]
    return env


# -- item 1: lenient JSON everywhere ----------------------------------------------------------
def test_comments_trailing_commas_and_single_quotes_in_every_file(tmp_path: Path) -> None:
    """HostFunctionMetadataProvider, HostJsonFileConfigurationSource, RpcWorkerConfigFactory
    and Core Tools' AppSettingsFile all parse with Newtonsoft's JObject.Parse: lenient, and
    64 levels of nesting are fine."""
    app, worker = write_files(
        tmp_path,
        functions={"env": FUNCTION_JSON % nested(61)},  # 64 deep in all
        host="// the app\n{'version': '2.0', extensions: {http: {routePrefix: 'x',},},}",
        settings="{/* settings */ 'IsEncrypted': false, Values: {'WK_SETTING': 'from-settings',},}",
        worker_config=config_text(LENIENT_WORKER_CONFIG),
    )
    with serving(app, worker) as running:
        assert environment_seen(running, "/x/env")["WK_SETTING"] == "from-settings"


def test_a_broken_function_json_stops_workerkit_host_as_it_stops_func_start(
    tmp_path: Path,
) -> None:
    """Core Tools pre-reads every function.json (StartHostAction.IsPreCompiledFunctionApp)
    with no error handling: `func start` exits 1; so does `workerkit host`, naming the file,
    the line and the column."""
    app, worker = write_files(
        tmp_path, functions={"env": HTTP_FUNCTION, "broken": '{\n  "bindings": [\n  }\n'}
    )
    done = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker),
         "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**clean_environ(), "NO_COLOR": "1"},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    broken = app / "broken" / "function.json"
    assert f"{broken}: not valid JSON: " in output
    assert "(line 3, column 3)" in output  # the '}' that closes no array


def test_nesting_deeper_than_the_host_reads_stops_start_up(tmp_path: Path) -> None:
    """Newtonsoft.Json 13's MaxDepth of 64 (JsonReader): the 65th container is refused."""
    app, worker = write_files(tmp_path, functions={"env": FUNCTION_JSON % nested(62)})
    message = start_error(app, worker)  # 62 arrays in bindings[0] in "bindings" in the root
    assert str(app / "env" / "function.json") in message
    assert "nest deeper than 64 levels" in message and "(line 11, column 76)" in message


def test_a_broken_host_json_stops_start_up_naming_the_line(tmp_path: Path) -> None:
    app, worker = write_files(tmp_path, host='{"version": "2.0",\n "logging": {]}')
    message = start_error(app, worker)
    assert message.startswith(f"{app / 'host.json'}: not valid JSON: ")
    assert "(line 2, column 14)" in message


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ('{"Values": {"WK_SETTING": "from-settings",\n  ]', "(line 2, column 3)"),
        ('{"Values": {"WK_SETTING": "from-settings", "X": {"a": 1}}}', "Values.X must be a"),
        ('{"Values": {"WK_SETTING": "x"}, "Host": {"LocalHttpPort": "x"}}', "LocalHttpPort"),
    ],
)
def test_a_broken_local_settings_json_is_a_warning_and_no_settings(
    tmp_path: Path, settings: str, reason: str
) -> None:
    """Core Tools' AppSettingsFile constructor: a JsonException (not JSON, or Values/Host
    that do not deserialize) is printed as a warning and func start goes on with no Values."""
    app, worker = write_files(tmp_path, settings=settings)
    with serving(app, worker) as running:
        assert "WK_SETTING" not in environment_seen(running)
        path = app / "local.settings.json"
        warning = f"Failed to read app settings file at '{path}'. Ensure it is a valid JSON file."
        assert warning in running.output and reason in running.output


# -- item 8: byte order marks ------------------------------------------------------------------
def test_utf16_and_utf32_files_with_a_byte_order_mark(tmp_path: Path) -> None:
    """.NET File.ReadAllText detects UTF-8/16/32 byte order marks (Windows PowerShell 5.1's
    Out-File writes UTF-16 LE with one)."""

    def encoded(bom: bytes, codec: str, text: str) -> bytes:
        return bom + text.encode(codec)

    app, worker = write_files(
        tmp_path,
        functions={
            "env": encoded(codecs.BOM_UTF16_LE, "utf-16-le", HTTP_FUNCTION),
            "env32": encoded(codecs.BOM_UTF32_BE, "utf-32-be", HTTP_FUNCTION),
        },
        host=encoded(codecs.BOM_UTF16_BE, "utf-16-be", HOST_JSON),
        settings=encoded(codecs.BOM_UTF32_LE, "utf-32-le", '{"Values": {"WK_SETTING": "café ☕"}}'),
        worker_config=encoded(codecs.BOM_UTF8, "utf-8", config_text()),
    )
    with serving(app, worker) as running:
        assert environment_seen(running)["WK_SETTING"] == "café ☕"
        assert running.request("GET", "/api/env32").json()["function"] == "env32"


# -- item 10: extensions -----------------------------------------------------------------------
def test_worker_extensions_compare_ignoring_case(tmp_path: Path) -> None:
    """HostFunctionMetadataProvider.ParseLanguage: Extensions.Contains(".txt",
    StringComparer.OrdinalIgnoreCase)."""
    app, worker = write_files(
        tmp_path, worker_config=config_text(WORKER_CONFIG.replace('[".txt"]', '[".TXT"]'))
    )
    with serving(app, worker) as running:
        assert running.request("GET", "/api/env").status == 200
        assert "in error" not in running.output


# -- item 12: host.json ------------------------------------------------------------------------
def test_an_empty_host_json_starts_with_the_defaults(tmp_path: Path) -> None:
    """HostJsonFileConfigurationSource.InitializeHostConfig: no values → {"version": "2.0"}."""
    app, worker = write_files(tmp_path, host="{ }")
    with serving(app, worker) as running:
        assert running.request("GET", "/api/env").status == 200


@pytest.mark.parametrize(
    ("host_json", "reason"),
    [
        ('{"version": 2.0}', "'2' is an invalid value for host.json 'version' property"),
        ('{"version": 2}', "'2' is an invalid value for host.json 'version' property"),
        ('{"version": true}', "'True' is an invalid value"),
        ('{"Version": "2.0"}', "missing the required 'version' property"),
        ('{"version": ""}', "missing the required 'version' property"),
        ('{"version": "3.0"}', "only to the schema version of the host.json file"),
    ],
)
def test_host_json_version_is_read_as_the_host_reads_it(
    tmp_path: Path, host_json: str, reason: str
) -> None:
    """InitializeHostConfig: hostConfigObject["version"]?.Value<string>() (case-sensitive;
    a JSON number becomes its .NET text) must equal "2.0"."""
    app, worker = write_files(tmp_path, host=host_json)
    message = start_error(app, worker)
    assert message.startswith(f"{app / 'host.json'}: ") and reason in message


# -- item 13: the environment Core Tools gives the worker -------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_worker_gets_the_environment_func_start_gives_it(tmp_path: Path) -> None:
    """Core Tools' StartHostAction (GetConfigurationSettings, UpdateEnvironmentVariables,
    ConfigureHostLoggingForUserLogLevel, RunAsync) and Program.SetCoreToolsEnvironmentVariables;
    a non-empty variable already in the environment wins over local.settings.json."""
    values = {
        "WK_SETTING": "from-settings",
        "AZURE_FUNCTIONS_ENVIRONMENT": "Production",
        "FROM_BOTH": "from-settings",
        "EMPTY_IN_ENV": "from-settings",
    }
    settings = {
        "IsEncrypted": False,
        "Values": values,
        "ConnectionStrings": {"Db": "Server=db", "Sql": {"ConnectionString": "Server=sql"}},
    }
    app, worker = write_files(tmp_path, settings=json.dumps(settings))
    port = free_port()
    environ = clean_environ(FROM_BOTH="from-environment", EMPTY_IN_ENV="")
    with serving(app, worker, port=port, environ=environ) as running:
        env = environment_seen(running)
        output = running.output
    assert env["AzureWebJobsScriptRoot"] == str(app)
    assert env["WEBSITE_HOSTNAME"] == f"localhost:{port}"
    assert env["AZURE_FUNCTIONS_ENVIRONMENT"] == "Development"
    assert "AZURE_FUNCTIONS_ENVIRONMENT already exists with value 'Production'" in output
    assert env["FUNCTIONS_CORETOOLS_ENVIRONMENT"] == "true"
    assert env["AzureFunctionsJobHost__SequentialRestart"] == "true"
    assert env["ASPNETCORE_SUPPRESSSTATUSMESSAGES"] == "true"
    assert env["Logging__LogLevel__Microsoft.Hosting.Lifetime"] == "None"
    assert env["AzureFunctionsJobHost__logging__logLevel__Function"] == "Information"
    assert env["PYTHON_ENABLE_DEBUG_LOGGING"] == "1"  # Core Tools sets it for every runtime
    assert env["ConnectionStrings:Db"] == "Server=db"
    assert env["ConnectionStrings:Sql"] == "Server=sql"
    assert (env["WK_SETTING"], env["EMPTY_IN_ENV"]) == ("from-settings", "from-settings")
    assert env["FROM_BOTH"] == "from-environment"
    assert "Skipping 'FROM_BOTH' from local settings as it's already defined" in output
    # the host's own (RpcWorkerProcess), and no Python-only ones for another language
    assert env["FUNCTIONS_APPLICATION_DIRECTORY"] == str(app)
    assert env["FUNCTIONS_WORKER_RUNTIME"] == "envecho"
    python_only = ("FUNCTIONS_WORKER_RUNTIME_VERSION", "PYTHON_THREADPOOL_THREAD_COUNT")
    assert not [k for k in env if k in python_only or k.lower().startswith("languageworkers")]
