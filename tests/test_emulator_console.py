"""What `workerkit host`'s console shows of a worker's logs and output, as ``func start`` does.

The host gives each line a category and a level (Azure/azure-functions-host:
src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs and WorkerProcessUtilities.cs
for worker output, src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs for ``RpcLog``s);
Core Tools' console shows user logs from Information and system logs from Warning
(Information with --verbose), host.json ``logging.logLevel`` first
(Azure/azure-functions-core-tools: src/Cli/func/Diagnostics/ColoredConsoleLogger.cs,
LoggingFilterHelper.cs, src/Cli/func/Common/Utilities.cs ``DefaultLoggingFilter``).

End to end with real `workerkit host` runs and a real worker subprocess written into the
test's directory; the console's classification of single lines also with Hypothesis.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from emulator_support import RunningEmulator, http_function, write_app, write_worker
from hypothesis import given
from hypothesis import strategies as st

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.emulator import Console, EmulatorOptions

#: A worker whose `talk` function prints and logs at every level, and whose start-up prints
#: worker-console lines (LanguageWorkerConsoleLog) and a tooling JSON line.
WORKER_SOURCE = r"""
import logging
import sys
import workerkit
from workerkit import HttpResponse

print("LanguageWorkerConsoleLogINFO: startup info from the worker", flush=True)
print("LanguageWorkerConsoleLog WARNING: startup warning LanguageWorkerConsoleLog twice",
      file=sys.stderr, flush=True)
print("languageworkerconsolelog error: lower case prefix", file=sys.stderr, flush=True)
print('azfuncjsonlog:{"name":"tooling","value":1}', flush=True)
print("plain startup line from the app", flush=True)

user = logging.getLogger("app.talk")
user.setLevel(logging.DEBUG)
system = logging.getLogger("workerkit.probe")  # workerkit sends workerkit.* as System logs
system.setLevel(logging.INFO)


class TalkWorker(workerkit.Worker):
    runtime_name = "talk"

    def on_function_load(self, function):
        pass

    async def on_invocation(self, invocation):
        name = invocation.function.name
        user.debug("%s: user debug line", name)
        user.info("%s: user info line", name)
        user.warning("%s: user warning line", name)
        system.info("%s: system info line", name)
        system.warning("%s: system warning line", name)
        print(f"{name}: printed during the call", flush=True)
        return HttpResponse(body="ok")


if __name__ == "__main__":
    TalkWorker.main()
"""


def talk_worker(root: Path) -> Path:
    worker = write_worker(root, description={"language": "talk", "defaultWorkerPath": "worker.py"})
    (worker / "worker.py").write_text(WORKER_SOURCE)
    return worker


def run_talk(
    tmp_path: Path,
    *,
    verbose: bool = False,
    host: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    printed: bool = True,
) -> str:
    """Serve the talk worker, call `alpha` and `beta` once each, stop; the console.
    `printed`: the app's console output is shown (waited for)."""
    app = write_app(tmp_path, {"alpha": http_function(["get"]), "beta": http_function(["get"])})
    if host is not None:
        (app / "host.json").write_text(json.dumps({"version": "2.0", **host}))
    base = {k: v for k, v in os.environ.items() if k != "FUNCTIONS_USER_LOG_LEVEL"}
    options = EmulatorOptions(app, talk_worker(tmp_path), port=0, environ=base | (environ or {}))
    running = RunningEmulator(options, verbose=verbose).start()
    try:
        assert running.start_error is None, running.output
        for name in ("alpha", "beta"):
            assert running.request("GET", f"/api/{name}").status == 200
            running.wait_for(f"Executed 'Functions.{name}'")
            if printed:
                running.wait_for(f"{name}: printed during the call")
    finally:
        assert running.stop() == 0
    return running.output


def shown(output: str, text: str) -> bool:
    return any(text in line for line in output.splitlines())


def test_worker_console_log_lines_are_the_workers_own_system_logs(tmp_path: Path) -> None:
    """A line starting with LanguageWorkerConsoleLog (any case) is logged by the host in the
    worker process's category with every occurrence of the word removed, so by default only
    its Warning and Error lines show; other output is the app's console log (shown); an
    azfuncjsonlog: line is printed without the prefix and without a timestamp."""
    output = run_talk(tmp_path)
    assert not shown(output, "startup info from the worker"), output
    assert shown(output, "]  WARNING: startup warning  twice"), output
    assert shown(output, "]  error: lower case prefix"), output
    assert "LanguageWorkerConsoleLog".lower() not in output.lower()
    assert '{"name":"tooling","value":1}' in output.splitlines(), output
    assert "azfuncjsonlog" not in output
    assert re.search(r"^\[\S+Z\] plain startup line from the app$", output, re.MULTILINE)
    assert shown(output, "alpha: printed during the call")


def test_with_verbose_the_workers_information_lines_show_too(tmp_path: Path) -> None:
    """``--verbose`` (like ``func start --verbose``) shows system logs from Information."""
    output = run_talk(tmp_path, verbose=True)
    assert shown(output, "] INFO: startup info from the worker"), output
    assert shown(output, "worker Information: alpha: system info line"), output


def test_user_logs_show_from_information_and_system_logs_from_warning(tmp_path: Path) -> None:
    """An invocation's user logs show from Information; the worker's System logs from
    Warning. (A workerkit worker sends no Debug records to a host that asks for none, as the
    real one does not: Debug user logs are checked on the console below.)"""
    output = run_talk(tmp_path)
    for name in ("alpha", "beta"):
        assert shown(output, f"{name} (") and shown(output, f"Information: {name}: user info")
        assert shown(output, f"Warning: {name}: user warning line")
        assert not shown(output, f"{name}: system info line"), output
        assert shown(output, f"worker Warning: {name}: system warning line"), output


def test_functions_user_log_level_chooses_the_user_level(tmp_path: Path) -> None:
    """FUNCTIONS_USER_LOG_LEVEL (Core Tools' --user-log-level) chooses the user level, for
    the function logs and the app's console output."""
    output = run_talk(tmp_path, environ={"FUNCTIONS_USER_LOG_LEVEL": "warning"}, printed=False)
    assert not shown(output, "alpha: user info line"), output
    assert shown(output, "Warning: alpha: user warning line"), output
    assert not shown(output, "plain startup line from the app"), output
    assert not shown(output, "alpha: system info line"), output


def test_host_json_log_levels_apply_by_category(tmp_path: Path) -> None:
    """host.json logging.logLevel: the longest matching category wins, default for the rest
    (here Warning: also the app's plain console output at Information is hidden)."""
    levels = {"default": "Warning", "Function.beta.User": "Information", "Worker": "Information"}
    output = run_talk(tmp_path, host={"logging": {"logLevel": levels}}, printed=False)
    assert not shown(output, "alpha: user info line"), output
    assert shown(output, "Warning: alpha: user warning line"), output
    assert shown(output, "Information: beta: user info line"), output
    assert shown(output, "alpha: system info line"), output  # Worker.* at Information
    assert shown(output, "] INFO: startup info from the worker"), output
    assert not shown(output, "plain startup line from the app"), output  # default: Warning


def test_an_unreadable_log_level_is_named(tmp_path: Path) -> None:
    output = run_talk(tmp_path, host={"logging": {"logLevel": {"Function": "Loud"}}})
    assert shown(output, "Information: alpha: user info line"), output
    assert "host.json logging.logLevel.Function: 'Loud' is not a log level" in output


# -- single lines, classified by the console ---------------------------------------------------

PREFIX = "LanguageWorkerConsoleLog"


def _console(verbose: bool = False) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(sink, color=False, verbose=verbose), sink


def _lines(sink: io.StringIO) -> list[str]:
    return [re.sub(r"^\[[^\]]*Z\] ", "", line) for line in sink.getvalue().splitlines()]


def _cased(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=False))


lines = st.text(st.characters(exclude_categories=("Cs", "Zl", "Zp", "Cc")), max_size=60)


@given(
    lines,
    st.lists(st.booleans(), min_size=len(PREFIX), max_size=len(PREFIX)),
    st.booleans(),
)
def test_a_worker_console_log_line_never_shows_the_word_and_shows_when_a_warning(
    rest: str, flips: list[bool], stderr: bool
) -> None:
    console, sink = _console()
    text = _cased(PREFIX, flips) + rest
    console.worker_output(text, stderr=stderr)
    expected = re.sub(PREFIX, "", text, flags=re.IGNORECASE)
    lowered = text.lower()
    warning = stderr and (
        "warn" in lowered
        or any(w in lowered for w in ("error", "fail", "severe", "unhandled exception"))
    )
    if expected.lower().startswith("azfuncjsonlog:"):
        return  # printed raw: the tooling line rule, tested below
    assert _lines(sink) == ([console_printable(expected)] if warning else [])


@given(lines.filter(lambda t: not t.lower().startswith(("languageworkerconsolelog", "azfunc"))))
def test_any_other_stdout_line_is_the_apps_console_output_and_shown_as_is(text: str) -> None:
    console, sink = _console()
    console.worker_output(text, stderr=False)
    assert _lines(sink) == [console_printable(text)]


def console_printable(text: str) -> str:
    from workerkit.emulator._console import printable

    return printable(text)


@pytest.mark.parametrize("level", list(pb.RpcLogLevel))
def test_user_rpc_logs_show_from_information_unless_told(level: pb.RpcLogLevel) -> None:
    from workerkit.emulator._logfilter import LogFilter

    for user_level, verbose in ((None, False), ("Trace", False), (None, True)):
        console, sink = _console(verbose)
        environ = {"FUNCTIONS_USER_LOG_LEVEL": user_level} if user_level else {}
        console.log_filter, _ = LogFilter.build(environ=environ, verbose=verbose)
        log = pb.RpcLog(invocation_id="i" * 36, level=level, message="hello")
        console.rpc_log(log, "fn", category="Function.fn.User")
        lowest = 0 if user_level else 2  # verbose is about system logs only
        assert bool(_lines(sink)) is (lowest <= int(level) < 6), (level, user_level, verbose)


@pytest.mark.parametrize(
    ("category", "level", "rules", "expected"),
    [
        ("Function.hello.User", 2, {}, True),
        ("Function.hello.User", 1, {}, False),
        ("Host.Function.Console", 2, {}, True),
        ("Worker.rpcWorkerProcess.x.1", 2, {}, False),
        ("Worker.rpcWorkerProcess.x.1", 3, {}, True),
        ("Worker.rpcWorkerProcess.x.1", 2, {"Worker.rpc*": "Information"}, True),
        ("Function.hello.User", 2, {"Function": "Error"}, False),
        ("Function.hello.User", 2, {"Function": "Error", "Function.hello": "Trace"}, True),
        ("Host.Function.Console", 2, {"default": "Warning"}, False),
        ("Function.hello.User", 2, {"default": "Warning"}, False),  # also the user level
        ("Function.hello.User", 2, {"default": "Warning", "Function": "Information"}, True),
    ],
)
def test_the_filter_picks_the_longest_matching_category(
    category: str, level: int, rules: dict[str, str], expected: bool
) -> None:
    from workerkit.emulator._logfilter import LogFilter

    log_filter, warnings = LogFilter.build(log_levels=rules.items())
    assert warnings == []
    assert log_filter.allows(category, level) is expected
