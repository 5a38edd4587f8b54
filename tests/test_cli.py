"""Tests for workerkit.cli: the host's command line, both spellings, parsed into HostArgs."""

import shlex
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import workerkit
from workerkit import HostArgs, HostArgsError, parse_host_args
from workerkit.cli import parse_host_args_or_exit

PROPERTY = settings(max_examples=200, deadline=None)
MAX_LEN = 2_147_483_647
KNOWN_OPTIONS = frozenset(
    {
        "--host",
        "--port",
        "--workerId",
        "--requestId",
        "--grpcMaxMessageLength",
        "--functions-uri",
        "--functions-worker-id",
        "--functions-request-id",
        "--functions-grpc-max-message-length",
    }
)

W = "6a1f0c4e-2b7d-4e55-9a55-7c1f0b5e2a10"
R = "0d2e3f40-1a2b-4c3d-8e4f-5a6b7c8d9e0f"


def host_pairs(port: int, worker_id: str, request_id: str) -> list[list[str]]:
    """The host's connection arguments as (option, value) pairs, in the host's order."""
    return [
        ["--host", "127.0.0.1"],
        ["--port", str(port)],
        ["--workerId", worker_id],
        ["--requestId", request_id],
        ["--grpcMaxMessageLength", str(MAX_LEN)],
        ["--functions-uri", f"http://127.0.0.1:{port}/"],
        ["--functions-worker-id", worker_id],
        ["--functions-request-id", request_id],
        ["--functions-grpc-max-message-length", str(MAX_LEN)],
    ]


def host_argv(port: int = 50123, worker_id: str = W, request_id: str = R) -> list[str]:
    return [token for pair in host_pairs(port, worker_id, request_id) for token in pair]


# -- the real host's argv -------------------------------------------------------------------


def test_exact_host_argv_both_spellings() -> None:
    # One line in reality, with a leading space: split the way the OS would.
    line = (
        f" --host 127.0.0.1 --port 50123 --workerId {W} --requestId {R}"
        " --grpcMaxMessageLength 2147483647"
        f" --functions-uri http://127.0.0.1:50123/ --functions-worker-id {W}"
        f" --functions-request-id {R} --functions-grpc-max-message-length 2147483647"
    )
    assert line.split() == host_argv()
    assert parse_host_args(line.split()) == HostArgs(
        host="127.0.0.1",
        port=50123,
        worker_id=W,
        request_id=R,
        max_message_length=MAX_LEN,
    )


def test_host_argv_after_worker_path_and_config_arguments() -> None:
    argv = ["-u", "/home/site/wwwroot/worker.py", "--foo", "bar", *host_argv(7071)]
    args = parse_host_args(argv)
    assert (args.host, args.port, args.worker_id, args.request_id) == ("127.0.0.1", 7071, W, R)


def test_only_old_spelling() -> None:
    argv = ["--host", "127.0.0.1", "--port", "5000", "--workerId", W, "--requestId", R]
    argv += ["--grpcMaxMessageLength", "1048576"]
    assert parse_host_args(argv) == HostArgs("127.0.0.1", 5000, W, R, 1_048_576)


def test_only_new_spelling() -> None:
    argv = [
        "--functions-uri",
        "http://127.0.0.1:5001/",
        "--functions-worker-id",
        W,
        "--functions-request-id",
        R,
        "--functions-grpc-max-message-length",
        "4096",
    ]
    assert parse_host_args(argv) == HostArgs("127.0.0.1", 5001, W, R, 4096)


def test_optional_values_default() -> None:
    args = parse_host_args(["--host", "127.0.0.1", "--port", "5000", "--workerId", W])
    assert args.request_id == ""
    assert args.max_message_length == MAX_LEN == workerkit.cli.DEFAULT_MAX_MESSAGE_LENGTH


# -- precedence -----------------------------------------------------------------------------

OLD = [
    "--host",
    "10.0.0.1",
    "--port",
    "1111",
    "--workerId",
    "old-worker",
    "--requestId",
    "old-request",
    "--grpcMaxMessageLength",
    "100",
]
NEW = [
    "--functions-uri",
    "http://127.0.0.1:2222/",
    "--functions-worker-id",
    "new-worker",
    "--functions-request-id",
    "new-request",
    "--functions-grpc-max-message-length",
    "200",
]


@pytest.mark.parametrize("argv", [OLD + NEW, NEW + OLD], ids=["old-first", "new-first"])
def test_functions_spelling_wins_whatever_the_order(argv: list[str]) -> None:
    assert parse_host_args(argv) == HostArgs("127.0.0.1", 2222, "new-worker", "new-request", 200)


def test_functions_uri_gives_host_and_port_over_old_values() -> None:
    argv = ["--host", "192.168.1.9", "--port", "9", "--workerId", W]
    argv += ["--functions-uri", "http://localhost:6006/"]
    args = parse_host_args(argv)
    assert (args.host, args.port, args.worker_id) == ("localhost", 6006, W)


def test_bad_old_port_is_irrelevant_when_uri_given() -> None:
    argv = ["--port", "abc", "--workerId", W, "--functions-uri", "http://127.0.0.1:6007/"]
    assert parse_host_args(argv).port == 6007


def test_old_spelling_fills_what_new_spelling_lacks() -> None:
    argv = ["--functions-uri", "http://127.0.0.1:6008/", "--workerId", W, "--requestId", R]
    assert parse_host_args(argv) == HostArgs("127.0.0.1", 6008, W, R)


# -- forms ----------------------------------------------------------------------------------


def test_equals_form() -> None:
    argv = [
        "--functions-uri=http://127.0.0.1:5002/",
        f"--functions-worker-id={W}",
        f"--requestId={R}",
        "--grpcMaxMessageLength=65536",
    ]
    assert parse_host_args(argv) == HostArgs("127.0.0.1", 5002, W, R, 65536)


def test_equals_form_old_spelling_and_value_containing_equals() -> None:
    args = parse_host_args(["--host=::1", "--port=5003", "--workerId=a=b", "--requestId="])
    assert args == HostArgs("::1", 5003, "a=b", "")


def test_ipv6_uri() -> None:
    argv = ["--functions-uri", "http://[::1]:5000/", "--functions-worker-id", W]
    args = parse_host_args(argv)
    assert (args.host, args.port) == ("::1", 5000)


def test_unknown_arguments_before_between_and_after() -> None:
    pairs = host_pairs(5004, W, R)
    argv = ["-u", "/opt/worker/worker.py", "--foo", "bar"]
    for pair in pairs:
        argv += [*pair, "--verbose", "x=y"]
    argv += ["--functions-something-new", "value", "-X", "dev", "--hostname", "example"]
    assert (
        parse_host_args(argv)
        == parse_host_args(host_argv(5004))
        == HostArgs("127.0.0.1", 5004, W, R, MAX_LEN)
    )


def _is_unknown(token: str) -> bool:
    return not any(token.startswith(name) for name in KNOWN_OPTIONS)


unknown_tokens = st.one_of(
    st.sampled_from(
        ["-u", "-X", "dev", "/home/site/wwwroot/worker.py", "--foo", "bar", "--", "-", "", "="]
    ),
    st.text(max_size=20),
    st.text(max_size=12).map(lambda s: "--" + s),
).filter(_is_unknown)

ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=40))


@PROPERTY
@given(
    port=st.integers(1, 65535),
    worker_id=ids,
    request_id=ids,
    gaps=st.lists(st.lists(unknown_tokens, max_size=4), min_size=10, max_size=10),
)
def test_unknown_tokens_interleaved_do_not_change_the_result(
    port: int, worker_id: str, request_id: str, gaps: list[list[str]]
) -> None:
    pairs = host_pairs(port, worker_id, request_id)
    expected = parse_host_args(host_argv(port, worker_id, request_id))
    assert expected == HostArgs("127.0.0.1", port, worker_id, request_id, MAX_LEN)
    argv = list(gaps[0])
    for pair, gap in zip(pairs, gaps[1:], strict=True):
        argv += [*pair, *gap]
    assert parse_host_args(argv) == expected


# -- errors ---------------------------------------------------------------------------------


def test_host_args_error_is_a_value_error() -> None:
    assert issubclass(HostArgsError, ValueError)
    assert workerkit.HostArgsError is HostArgsError


@pytest.mark.parametrize(
    ("argv", "named", "not_named"),
    [
        (["--host", "127.0.0.1", "--port", "5000"], ["--workerId", "--functions-worker-id"], []),
        (
            ["--host", "127.0.0.1", "--workerId", W],
            ["--port", "--functions-uri"],
            ["--workerId", "--host"],
        ),
        (["--port", "5000", "--workerId", W], ["--host", "--functions-uri"], ["--port"]),
        (["--requestId", R], ["--host", "--port", "--workerId"], []),
        ([], ["--host", "--port", "--workerId"], []),
        (["-u", "worker.py", "--foo", "bar"], ["--host", "--port", "--workerId"], []),
        (
            ["--functions-uri", "http://127.0.0.1:5000/", "--requestId", R],
            ["--workerId", "--functions-worker-id"],
            ["--port", "--host"],
        ),
        (["--host", "127.0.0.1", "--port", "5000", "--workerId", ""], ["--workerId"], []),
    ],
)
def test_missing_required_value_names_the_option(
    argv: list[str], named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(HostArgsError) as info:
        parse_host_args(argv)
    message = str(info.value)
    assert "missing" in message
    for option in named:
        assert option in message, (option, message)
    for option in not_named:
        assert option not in message, (option, message)


@pytest.mark.parametrize("port", ["abc", "0", "70000", "-1", "", "5000.0"])
def test_bad_old_port(port: str) -> None:
    with pytest.raises(HostArgsError, match=r"(?i)port"):
        parse_host_args(["--host", "127.0.0.1", "--port", port, "--workerId", W])


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:abc/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:70000/",
        "http://127.0.0.1/",
        "not a uri",
        "http://[::1/",
    ],
)
def test_bad_functions_uri(uri: str) -> None:
    with pytest.raises(HostArgsError) as info:
        parse_host_args(["--functions-uri", uri, "--workerId", W, "--port", "5000"])
    message = str(info.value)
    assert "--functions-uri" in message or "port" in message.lower(), message


@pytest.mark.parametrize("length", ["abc", "0", str(MAX_LEN + 1)])
def test_bad_max_message_length(length: str) -> None:
    argv = [*host_argv()[:-1], length]
    with pytest.raises(HostArgsError, match="max message length"):
        parse_host_args(argv)


@pytest.mark.parametrize("option", sorted(KNOWN_OPTIONS))
def test_option_at_the_end_without_value(option: str) -> None:
    with pytest.raises(HostArgsError, match=f"^{option} needs a value$"):
        parse_host_args([*host_argv(), option])


# -- to_argv round trip ---------------------------------------------------------------------


def test_to_argv_is_the_hosts_argv() -> None:
    assert HostArgs("127.0.0.1", 50123, W, R).to_argv() == host_argv()


def test_to_argv_ipv6_brackets_the_uri() -> None:
    argv = HostArgs("::1", 5000, W, R).to_argv()
    assert argv[argv.index("--functions-uri") + 1] == "http://[::1]:5000/"
    assert parse_host_args(argv) == HostArgs("::1", 5000, W, R)


@PROPERTY
@given(
    host=st.sampled_from(["127.0.0.1", "::1", "localhost", "10.1.2.3", "fe80::1"]),
    port=st.integers(1, 65535),
    worker_id=ids,
    request_id=st.one_of(st.just(""), ids),
    length=st.integers(1, MAX_LEN),
)
def test_to_argv_round_trips(
    host: str, port: int, worker_id: str, request_id: str, length: int
) -> None:
    args = HostArgs(host, port, worker_id, request_id, length)
    assert parse_host_args(args.to_argv()) == args


# -- process level --------------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import workerkit


    class MyWorker(workerkit.Worker):
        def on_function_load(self, function):
            return None

        def on_invocation(self, invocation):
            return None


    if __name__ == "__main__":
        MyWorker.main()
    """
)


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / f"worker_{uuid.uuid4().hex[:8]}.py"
    path.write_text(WORKER_SCRIPT)
    return path


@pytest.mark.parametrize(
    ("extra", "missing", "present"),
    [
        (["--host", "127.0.0.1"], ["--port", "--workerId"], ["or --host"]),
        (
            ["--functions-uri", "http://127.0.0.1:5000/", "--requestId", R],
            ["--workerId"],
            ["--port", "--host"],
        ),
        (["--port", "5000", "--workerId", W, "--foo"], ["--host"], ["--port", "--workerId"]),
    ],
    ids=["host-only", "no-worker-id", "no-host"],
)
def test_worker_process_with_incomplete_argv_exits_2_with_one_line(
    worker_script: Path, extra: list[str], missing: list[str], present: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(worker_script), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=worker_script.parent,
    )
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.endswith("\n")
    line = lines[0]
    assert line.startswith("LanguageWorkerConsoleLog"), line  # the host logs it as the worker's
    assert "error" in line and "missing" in line, line
    assert f"{worker_script.name} --help" in line, line  # where the explanation is
    assert "Traceback" not in line
    for option in missing:
        assert option in line, (option, line)
    for text in present:
        assert text not in line, (text, line)


# -- a worker run by hand ---------------------------------------------------------------------

TEMPLATES = EXAMPLES / "templates"


def run_by_hand(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def suggested_command(stderr: str) -> tuple[str, str]:
    """The app and worker directories of the ``workerkit host`` command in `stderr`, as the
    shell would pass them."""
    lines = [line for line in stderr.splitlines() if line.lstrip().startswith("workerkit host ")]
    assert len(lines) == 1, stderr
    words = shlex.split(lines[0])
    assert words[:2] == ["workerkit", "host"] and words[3] == "--worker" and len(words) == 5, words
    return words[2], words[4]


def assert_explains(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "Azure Functions language worker" in stderr
    assert "the Functions" in stderr and "host" in stderr
    assert all(option in stderr for option in KNOWN_OPTIONS), stderr


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
def test_example_worker_run_by_hand_says_how_to_run_it(tmp_path: Path, where: str) -> None:
    cwd = ROOT if where == "repository" else tmp_path
    proc = run_by_hand(TEMPLATES / "worker.py", cwd=cwd)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.startswith("worker.py: error: no host arguments\n"), proc.stderr
    assert_explains(proc.stderr)
    app, worker = suggested_command(proc.stderr)
    assert (cwd / worker).resolve() == TEMPLATES.resolve()
    assert (cwd / app).resolve() == (TEMPLATES / "app").resolve()
    if where == "repository":  # relative to the working directory when that is shorter
        assert (app, worker) == ("examples/templates/app", "examples/templates")
    assert "APP_DIR" not in proc.stderr  # the example has its app
    assert "needs a worker.config.json" not in proc.stderr  # and its worker.config.json


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["-u", "--help", "--foo"], ["--host", "127.0.0.1", "-h"]],
    ids=["--help", "-h", "among-unknown-arguments", "with-a-partial-host-command-line"],
)
def test_example_worker_help_exits_0_with_the_explanation(args: list[str]) -> None:
    proc = run_by_hand(TEMPLATES / "worker.py", *args, cwd=ROOT)
    assert proc.returncode == 0, proc
    assert proc.stdout == ""
    assert "error" not in proc.stderr
    assert_explains(proc.stderr)
    assert suggested_command(proc.stderr) == ("examples/templates/app", "examples/templates")


def test_worker_with_unknown_arguments_only_is_run_by_hand(worker_script: Path) -> None:
    proc = run_by_hand(worker_script, "-u", "--verbose", cwd=worker_script.parent)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith(f"{worker_script.name}: error: no host arguments\n")
    assert_explains(proc.stderr)


def test_run_by_hand_quotes_the_directories_and_names_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "my worker's dir"
    folder.mkdir()
    script = folder / "my worker.py"
    script.write_text(WORKER_SCRIPT)

    proc = run_by_hand(script, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc
    assert suggested_command(proc.stderr) == ("APP_DIR", "my worker's dir")
    assert "APP_DIR: the function app directory" in proc.stderr
    assert "needs a worker.config.json naming my worker.py" in proc.stderr

    (folder / "app").mkdir()
    (folder / "worker.config.json").write_text("{}")
    proc = run_by_hand(script, cwd=tmp_path)
    assert proc.returncode == 2, proc
    assert suggested_command(proc.stderr) == ("my worker's dir/app", "my worker's dir")
    assert "APP_DIR" not in proc.stderr
    assert "worker.config.json" not in proc.stderr

    proc = run_by_hand(script, "-h", cwd=folder)  # in the worker's own directory
    assert suggested_command(proc.stderr) == ("app", ".")


def test_help_flag_in_a_complete_host_command_line_is_ignored() -> None:
    # A host (or worker.config.json) may pass arguments we do not know, -h included: with
    # the host's arguments complete, the worker serves.
    argv = ["-h", *host_argv(), "--help"]
    assert parse_host_args_or_exit(argv, script="worker.py") == parse_host_args(host_argv())
