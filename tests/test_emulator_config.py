"""worker.config.json read as the host reads it: schema, profiles, languageWorkers settings,
and the argv and environment the host builds from it."""

from __future__ import annotations

import codecs
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit import HostArgs
from workerkit.emulator import WorkerConfig, WorkerConfigError, read_worker_config
from workerkit.emulator._config import parse_timespan
from workerkit.emulator._jsonfile import (
    JsonSyntaxError,
    _depth,
    _Parser,
    decode_text,
    dotnet_string,
    parse_json,
    read_json_object,
)
from workerkit.emulator._launch import (
    CoreToolsError,
    core_tools_environment,
    split_dotnet_arguments,
)

PROPERTY = settings(max_examples=200, deadline=None)
ARGS = HostArgs("127.0.0.1", 5555, "wid", "rid")
CONNECTION = ARGS.to_argv()


def write(directory: Path, config: Any, worker_file: str | None = "worker.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if worker_file:
        (directory / worker_file).write_text("")
    text = config if isinstance(config, str) else json.dumps(config)
    (directory / "worker.config.json").write_text(text)
    return directory


def description(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "language": "workerkit",
        "extensions": [".py"],
        "defaultExecutablePath": "python3",
        "defaultWorkerPath": "worker.py",
    }
    base.update(fields)
    return {"description": {k: v for k, v in base.items() if v is not None}}


def read(tmp_path: Path, config: Any, env: dict[str, str] | None = None, **kw: Any) -> WorkerConfig:
    return read_worker_config(write(tmp_path / "w", config, **kw), env or {})


def rejected(tmp_path: Path, config: Any, env: dict[str, str] | None = None, **kw: Any) -> str:
    with pytest.raises(WorkerConfigError) as info:
        read(tmp_path, config, env, **kw)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "w" / "worker.config.json") + ": ")
    return message


# -- what is read ------------------------------------------------------------------------------
def test_the_recommended_config(tmp_path: Path) -> None:
    config = read(
        tmp_path,
        {
            **description(arguments=["-u"], workerIndexing="true"),
            "processOptions": {
                "initializationTimeout": "00:02:00",
                "processRestartInterval": "00:00:01.5",
            },
        },
    )
    worker_dir = tmp_path / "w"
    assert config.language == "workerkit"
    assert config.worker_directory == worker_dir
    assert config.worker_path == worker_dir / "worker.py"
    assert config.extensions == (".py",)
    assert config.worker_indexing is True
    assert (config.init_timeout, config.restart_interval) == (120.0, 1.5)
    assert (config.startup_timeout, config.env_reload_timeout, config.shutdown_timeout) == (
        60,
        30,
        10,
    )
    assert config.command(ARGS) == ["python3", "-u", str(worker_dir / "worker.py"), *CONNECTION]


def test_names_inside_description_are_case_insensitive_and_json_scalars_become_strings(
    tmp_path: Path,
) -> None:
    # RpcWorkerConfigFactory.AddProvider: Property("description") is case-sensitive, the
    # description's own members are bound by ToObject<RpcWorkerDescription>() in any case.
    config = read(
        tmp_path,
        {"description": {"LANGUAGE": "x", "defaultexecutablepath": "run", "workerIndexing": True}},
        worker_file=None,
    )
    assert (config.language, config.executable, config.worker_indexing) == ("x", "run", True)
    assert config.worker_path is None
    assert config.command(ARGS) == ["run", *CONNECTION]
    versioned = read(tmp_path, description(defaultRuntimeVersion=3.0, language=2.5))
    assert (versioned.default_runtime_version, versioned.language) == ("3", "2.5")  # .NET text


def test_argv_is_built_as_one_string_like_the_host(tmp_path: Path) -> None:
    # one element may carry several tokens; {workerDirectoryPath}; quoted worker path with a space;
    # %VAR% from the environment; leftover %TOKENS% are deleted; host-injected keys replaced
    worker_dir = tmp_path / "my worker"
    write(
        worker_dir,
        description(
            defaultWorkerPath="main file.py",
            arguments=[
                "-jar {workerDirectoryPath}/x.jar",
                "--home=%HOME_DIR%",
                "%UNSET_THING%--flag",
                "--app=%FUNCTIONS_APPLICATION_DIRECTORY%",
            ],
            defaultExecutablePath="%FUNCTIONS_WORKER_DIRECTORY%/bin/java",
        ),
        worker_file="main file.py",
    )
    config = read_worker_config(worker_dir, {"HOME_DIR": "/home/me"})
    assert config.command(ARGS, app_dir=Path("/srv/app")) == [
        f"{worker_dir}/bin/java",
        "-jar",
        f"{tmp_path}/my",  # arguments are not quoted: a space splits them, as in the host
        "worker/x.jar",
        "--home=/home/me",
        "--flag",
        "--app=/srv/app",
        str(worker_dir / "main file.py"),
        *CONNECTION,
    ]


def test_language_worker_settings_override_in_both_spellings(tmp_path: Path) -> None:
    env = {
        "languageWorkers__workerkit__defaultExecutablePath": "/opt/python",
        "LANGUAGEWORKERS:WORKERKIT:ARGUMENTS": "-X dev",
    }
    config = read(tmp_path, description(arguments=["-u"]), env)
    assert config.command(ARGS)[:4] == ["/opt/python", "-u", "-X", "dev"]


def test_the_worker_environment(tmp_path: Path) -> None:
    config = read(tmp_path, description(), {"FUNCTIONS_WORKER_RUNTIME_VERSION": "3.11"})
    env = config.environment(Path("/srv/app"), {"PATH": "/bin", "A": "1"})
    assert env == {
        "PATH": "/bin",
        "A": "1",
        "FUNCTIONS_WORKER_RUNTIME": "workerkit",
        "FUNCTIONS_WORKER_DIRECTORY": str(tmp_path / "w"),
        "FUNCTIONS_APPLICATION_DIRECTORY": "/srv/app",
        "FUNCTIONS_WORKER_RUNTIME_VERSION": "3.11",
    }
    python = read(tmp_path, description(language="python")).environment(Path("/a"), {})
    assert python["PYTHON_THREADPOOL_THREAD_COUNT"] == "1000"


def test_placeholders_in_the_worker_path(tmp_path: Path) -> None:
    os_name = {"Windows": "WINDOWS", "Darwin": "OSX"}.get(platform.system(), "LINUX")
    worker = tmp_path / "w"
    (worker / os_name / "3.11").mkdir(parents=True)
    (worker / os_name / "3.11" / "worker.py").write_text("")
    config = read(
        tmp_path,
        description(
            defaultWorkerPath="{os}/%FUNCTIONS_WORKER_RUNTIME_VERSION%/worker.py",
            supportedOperatingSystems=[os_name.lower()],
            supportedRuntimeVersions=["3.11"],
            sanitizeRuntimeVersionRegex=r"\d+\.\d+",
        ),
        {"FUNCTIONS_WORKER_RUNTIME": "workerkit", "FUNCTIONS_WORKER_RUNTIME_VERSION": "3.11.7"},
    )
    assert config.worker_path == worker / os_name / "3.11" / "worker.py"


def test_a_matching_profile_applies_and_drops_fields_like_the_host(tmp_path: Path) -> None:
    config = read(
        tmp_path,
        {
            **description(workerIndexing="true"),
            "profiles": [
                {
                    "profileName": "other",
                    "conditions": [
                        {
                            "conditionType": "environment",
                            "conditionName": "NOPE",
                            "conditionExpression": ".*",
                        }
                    ],
                    "description": {"defaultExecutablePath": "never"},
                },
                {
                    "profileName": "mine",
                    "conditions": [
                        {
                            "conditionType": "environment",
                            "conditionName": "STAGE",
                            "conditionExpression": "^prod",
                        },
                        {
                            "conditionType": "hostProperty",
                            "conditionName": "HostVersion",
                            "conditionExpression": "^4\\.",
                        },
                    ],
                    "description": {"defaultExecutablePath": "python3.12"},
                },
            ],
        },
        {"STAGE": "production"},
    )
    assert (config.profile, config.executable) == ("mine", "python3.12")
    assert config.worker_indexing is False
    assert any("drops workerIndexing" in w for w in config.warnings)


def test_process_count_from_the_environment(tmp_path: Path) -> None:
    config = read(tmp_path, description(), {"FUNCTIONS_WORKER_PROCESS_COUNT": "0"})
    assert config.process_count == 1  # values below 1 mean 1


# -- what is rejected, each with the file and the reason ---------------------------------------
@pytest.mark.parametrize(
    ("config", "env", "reason"),
    [
        ("{not json", {}, "not valid JSON"),
        ("[]", {}, "the top level must be a JSON object"),
        ({}, {}, "the 'description' object is missing"),
        (
            {"Description": description()["description"]},
            {},
            "reads 'description' in that case only, not 'Description'",
        ),
        ({"description": []}, {}, "'description' must be an object"),
        (description(language=""), {}, "description.language cannot be empty"),
        (description(language=None), {}, "description.language cannot be empty"),
        (description(defaultExecutablePath=""), {}, "defaultExecutablePath cannot be empty"),
        (description(language={"a": 1}), {}, "description.language must be a string"),
        (description(extensions=".py"), {}, "description.extensions must be an array"),
        (description(arguments=[["-u"]]), {}, "description.arguments must hold strings"),
        (description(isDisabled=True), {}, "is disabled"),
        (description(isDisabled="maybe"), {}, "must be true or false"),
        (description(defaultWorkerPath="missing.py"), {}, "defaultWorkerPath"),
        (description(defaultWorkerPath="%WHERE%/worker.py"), {"WHERE": "."}, "before expanding"),
        (description(), {"FUNCTIONS_WORKER_RUNTIME": "python"}, "the host would skip this config"),
        (description(), {"FUNCTIONS_WORKER_RUNTIME": "dotnet"}, "reads no worker.config.json"),
        (
            description(defaultWorkerPath="{os}/worker.py", supportedOperatingSystems=["Plan9"]),
            {},
            "is not supported for language workerkit",
        ),
        (
            description(defaultWorkerPath="{architecture}/w.py", supportedArchitectures=["Z80"]),
            {},
            "Architecture",
        ),
        (
            description(
                defaultWorkerPath="%FUNCTIONS_WORKER_RUNTIME_VERSION%/w.py",
                defaultRuntimeVersion="9",
                supportedRuntimeVersions=["1"],
            ),
            {},
            "Version 9 is not supported",
        ),
        (
            description(sanitizeRuntimeVersionRegex=r"^\d+$"),
            {"FUNCTIONS_WORKER_RUNTIME": "workerkit", "FUNCTIONS_WORKER_RUNTIME_VERSION": "v1"},
            "does not match the regular expression",
        ),
        ({**description(), "processOptions": []}, {}, "'processOptions' must be an object"),
        ({**description(), "processOptions": {"initializationTimeout": 10}}, {}, "TimeSpan string"),
        (
            {**description(), "processOptions": {"initializationTimeout": "ten"}},
            {},
            "is not a TimeSpan",
        ),
        (
            {**description(), "processOptions": {"processStartupTimeout": "24:00:00"}},
            {},
            "out of range",
        ),
        (
            {**description(), "processOptions": {"initializationTimeout": "00:00:00"}},
            {},
            "positive",
        ),
        ({**description(), "processOptions": {"processCount": 11}}, {}, "MaxProcessCount"),
        ({**description(), "processOptions": {"processCount": 0}}, {}, "greater than 0"),
        ({**description(), "processOptions": {"processCount": "2"}}, {}, "whole number"),
        (
            {**description(), "processOptions": {"processStartupInterval": "-00:00:01"}},
            {},
            "must not be negative",
        ),
        (description(), {"FUNCTIONS_WORKER_PROCESS_COUNT": "many"}, "not a whole number"),
        ({**description(), "profiles": {}}, {}, "Failed to parse profiles"),
        (
            {
                **description(),
                "profiles": [{"profileName": "", "conditions": [], "description": {}}],
            },
            {},
            "Name cannot be empty",
        ),
        (
            {
                **description(),
                "profiles": [{"profileName": "p", "conditions": [], "description": {}}],
            },
            {},
            "Conditions cannot be empty",
        ),
        (
            {
                **description(),
                "profiles": [
                    {
                        "profileName": "p",
                        "conditions": [
                            {
                                "conditionType": "environment",
                                "conditionName": "A",
                                "conditionExpression": "(",
                            }
                        ],
                        "description": {},
                    }
                ],
            },
            {},
            "must be a valid regular expression",
        ),
        (
            {
                **description(),
                "profiles": [
                    {
                        "profileName": "p",
                        "conditions": [
                            {
                                "conditionType": "hostProperty",
                                "conditionName": "Moon",
                                "conditionExpression": "x",
                            }
                        ],
                        "description": {},
                    }
                ],
            },
            {},
            "not a valid host property name",
        ),
    ],
)
def test_rejections(tmp_path: Path, config: Any, env: dict[str, str], reason: str) -> None:
    assert reason in rejected(tmp_path, config, env)


@pytest.mark.parametrize(
    "expression",
    ["(" * 5000 + "a" + ")" * 5000, "a{99999999999}"],  # once a RecursionError, an OverflowError
)
def test_regular_expressions_python_cannot_compile_are_the_files_error(
    tmp_path: Path, expression: str
) -> None:
    condition = {"conditionType": "environment", "conditionName": "A"}
    profile = {
        "profileName": "p",
        "conditions": [{**condition, "conditionExpression": expression}],
        "description": {},
    }
    message = rejected(tmp_path, {**description(), "profiles": [profile]}, {"A": "a"})
    assert "must be a valid regular expression" in message
    env = {"FUNCTIONS_WORKER_RUNTIME": "workerkit", "FUNCTIONS_WORKER_RUNTIME_VERSION": "3.11"}
    message = rejected(tmp_path, description(sanitizeRuntimeVersionRegex=expression), env)
    assert "sanitizeRuntimeVersionRegex" in message and "is invalid" in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkerConfigError, match=r"worker\.config\.json: file not found"):
        read_worker_config(tmp_path, {})


# -- TimeSpan and argument splitting ---------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:10", 10),
        ("00:02:00", 120),
        ("1.02:03:04", 93784),
        ("00:00:01.5", 1.5),
        ("-00:00:01", -1),
        ("3", 259200),
        ("-1", -86400),
        ("12:30", 45000),
    ],
)
def test_timespans(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds


@PROPERTY
@given(st.integers(0, 3), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_timespans_round_trip(days: int, hours: int, minutes: int, secs: int) -> None:
    text = (
        f"{days}.{hours:02}:{minutes:02}:{secs:02}"
        if days
        else f"{hours:02}:{minutes:02}:{secs:02}"
    )
    assert parse_timespan(text) == days * 86400 + hours * 3600 + minutes * 60 + secs


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10675199.02:48:05.4775807", 922337203685.4775807),  # TimeSpan.MaxValue
        ("-10675199.02:48:05.4775808", -922337203685.4775808),  # TimeSpan.MinValue
        ("0" * 5000 + "1", 86400),  # leading zeros, more than int() converts
    ],
)
def test_the_longest_timespans(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "10675200",
        "10675199.02:48:05.4775808",
        "1" + "0" * 400,  # once an OverflowError, not a ValueError
        "9" * 400 + ".00:00:00",
        "00:00:" + "9" * 5000,  # more digits than int() converts
        "0" * 5000 + "10675200",  # the same, made of zeros
        "\u0663",  # an Arabic-Indic 3: .NET reads ASCII digits only
    ],
)
def test_timespans_dotnet_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a TimeSpan|is out of range"):
        parse_timespan(text)


def test_a_timespan_too_long_is_the_config_files_error(tmp_path: Path) -> None:
    message = rejected(
        tmp_path, {**description(), "processOptions": {"processStartupTimeout": "9" * 400}}
    )
    assert "processOptions.processStartupTimeout" in message and "out of range" in message


@PROPERTY
@given(st.text(max_size=12))
def test_timespans_reject_or_parse_anything_without_crashing(text: str) -> None:
    try:
        parse_timespan(text)
    except ValueError:
        pass


@pytest.mark.parametrize(
    ("text", "argv"),
    [
        (' a "b c" d', ["a", "b c", "d"]),
        ('"a""b"', ['a"b']),
        (r"a\\b", [r"a\\b"]),
        (r"a\"b", ['a"b']),
        (r'"a\\" b', ["a\\", "b"]),
        ("  ", []),
        ('""', [""]),
    ],
)
def test_dotnet_argument_splitting(text: str, argv: list[str]) -> None:
    assert split_dotnet_arguments(text) == argv


@PROPERTY
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters='"\\ \t', blacklist_categories=["Cs"]),
            min_size=1,
        ),
        max_size=6,
    )
)
def test_plain_tokens_split_back(tokens: list[str]) -> None:
    assert split_dotnet_arguments(" ".join(tokens)) == tokens


@PROPERTY
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters='"\\', blacklist_categories=["Cs"])),
        max_size=4,
    )
)
def test_quoted_tokens_split_back(tokens: list[str]) -> None:
    assert split_dotnet_arguments(" ".join(f'"{t}"' for t in tokens)) == tokens


# -- the configuration file reader (_jsonfile) ------------------------------------------------
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@PROPERTY
@given(JSON_VALUES, st.sampled_from([None, 0, 2]))
def test_strict_json_reads_the_same_through_both_paths(value: Any, indent: int | None) -> None:
    # the fast path (json) and the hand-written reader agree wherever strict JSON is valid
    text = json.dumps(value, indent=indent)
    assert parse_json(text) == value
    assert _Parser(text).document() == value


def _lenient(value: Any) -> str:
    """`value` written as Newtonsoft reads it: comments, single quotes, trailing commas."""
    if isinstance(value, dict):
        items = "".join(f" /* k */ {_single_quoted(k)}: {_lenient(v)}," for k, v in value.items())
        return "{" + items + " // end\n}"
    if isinstance(value, list):
        return "[" + "".join(f"{_lenient(v)}," for v in value) + "]"
    if isinstance(value, str):
        return _single_quoted(value)
    return json.dumps(value)


def _single_quoted(text: str) -> str:
    return "'" + json.dumps(text)[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"


@PROPERTY
@given(JSON_VALUES)
def test_comments_single_quotes_and_trailing_commas_read_as_the_same_value(value: Any) -> None:
    assert parse_json("// a file\n" + _lenient(value)) == value


@PROPERTY
@given(st.text(alphabet="{}[]\"',:/*\\ \n0x1.-eNaInfityrusl$ab", max_size=40))
def test_any_text_is_a_value_or_a_syntax_error_with_a_position(text: str) -> None:
    try:
        parse_json(text)
    except JsonSyntaxError as exc:
        assert exc.line >= 1 and exc.column >= 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{a: 1, $b_2: 'x', 'c': \"y\"}", {"a": 1, "$b_2": "x", "c": "y"}),
        ("{1a: 1}", {"1a": 1}),  # Newtonsoft: letters or digits, any order
        ('{"a": "two\nlines"}', {"a": "two\nlines"}),
        ("[1,,2,]", [1, None, 2]),  # an empty slot is undefined
        ('{"a": undefined, "b": 0x1F, "c": 010, "d": .5, "e": 1.}', {
            "a": None, "b": 31, "c": 8, "d": 0.5, "e": 1.0}),
        ('{"a": 1, "a": 2}', {"a": 2}),
        ("[0xFFFFFFFFFFFFFFFF, 0x7fffffffffffffff, 01777777777777777777777, -010]",
         [-1, 2**63 - 1, -1, -10]),  # Convert.ToInt64(…, 16 or 8); "-010" is decimal
        ("\u00a0{}\u2028", {}),  # .NET char.IsWhiteSpace
        ('{"s": "\\ud83d\\ude00\\u00e9"}', {"s": "😀é"}),
    ],
)  # fmt: skip
def test_newtonsoft_dialect(text: str, value: Any) -> None:
    assert parse_json(text) == value


def test_nan_and_infinity() -> None:
    value = parse_json("{'a': NaN, 'b': Infinity, 'c': -Infinity}")
    assert value["a"] != value["a"] and value["b"] == math.inf and value["c"] == -math.inf


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("{", "ends inside an object", 1, 2),
        ('{\r\n"a" 1}', "expected ':'", 2, 5),
        ("{,}", "where a property name should be", 1, 2),
        ('{"a": 09}', "'09' is not a number", 1, 7),
        ('{"a": 0x10000000000000000}', "is not a number", 1, 7),  # beyond 64 bits
        ('{"a": 0x' + "f" * 4000 + "}", "is not a number", 1, 7),  # str() of it: a ValueError
        ('{"a": -0x1F}', "'-0x1F' is not a number", 1, 7),  # hexadecimal only after a 0
        ('{"a": 00.5}', "'00.5' is not a number", 1, 7),  # a leading 0 makes it octal
        ('{"a": +1}', "where a value should be", 1, 7),
        ('{"a": new Date(1)}', "JavaScript constructor", 1, 7),
        ('{"a": 1} x', "after the end of the JSON value", 1, 10),
        ("  // only a comment", "there is no JSON value", 1, 20),
        ("{} /* open", "never closed", 1, 4),
        ("{a-b: 1}", "cannot be part of an unquoted property name", 1, 3),
        ('{"a": "\\q"}', "\\q is not an escape sequence", 1, 8),
        ('{"a": "\\u12"}', "four hexadecimal digits", 1, 8),
        ("{'a': 'open", "never closed", 1, 7),
        ("[" * 65 + "]" * 65, "deeper than 64 levels", 1, 65),
        ("[" * 100_000, "deeper than 64 levels", 1, 65),  # no RecursionError
    ],
)
def test_what_is_refused_and_where(text: str, message: str, line: int, column: int) -> None:
    with pytest.raises(JsonSyntaxError) as info:
        parse_json(text)
    assert message in info.value.message
    assert (info.value.line, info.value.column) == (line, column)


def test_64_levels_are_read() -> None:
    assert _depth(parse_json("[" * 64 + "]" * 64)) == 64


@pytest.mark.parametrize(
    ("bom", "codec"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
def test_byte_order_marks_pick_the_encoding(bom: bytes, codec: str) -> None:
    text = '{"a": "café ☕ 😀"}'
    assert decode_text(bom + text.encode(codec)) == text


def test_without_a_bom_the_bytes_are_utf8_and_bad_ones_replaced() -> None:
    assert decode_text("é".encode() + b"\xff") == "é\ufffd"  # File.ReadAllText never fails
    assert decode_text("{}".encode("utf-16-le")) == "{\x00}\x00"  # no BOM: not UTF-16


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "True"), (False, "False"), (2.0, "2"), (2.5, "2.5"), (7, "7"), (None, None),
     ("x", "x"), (math.inf, "Infinity"), (1e-7, "1E-07")],
)  # fmt: skip
def test_scalars_become_their_dotnet_text(value: Any, text: str | None) -> None:
    assert dotnet_string(value) == text


def test_read_json_object_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"

    def error(where: Path, reason: str) -> ValueError:
        return ValueError(f"{where}: {reason}")

    with pytest.raises(ValueError, match=r"x\.json: gone"):
        read_json_object(path, error=error, missing="gone")
    path.write_text("[]")
    with pytest.raises(ValueError, match="the top level must be a JSON object"):
        read_json_object(path, error=error)
    path.write_text("{\n  'a': 1,\n  'b': }")
    with pytest.raises(ValueError, match=r"not valid JSON: .* \(line 3, column 8\)"):
        read_json_object(path, error=error)


def test_worker_config_top_level_names_are_case_sensitive(tmp_path: Path) -> None:
    # JObject.Property("processOptions"): another case is not read (the defaults apply)
    config = read(tmp_path, {**description(), "ProcessOptions": {"initializationTimeout": "bad"}})
    assert config.init_timeout == 10.0


def test_worker_extensions_are_kept_lower_cased(tmp_path: Path) -> None:
    assert read(tmp_path, description(extensions=[".PY", ".Txt"])).extensions == (".py", ".txt")


# -- the environment func start gives the host (core_tools_environment) ----------------------
def test_core_tools_environment_precedence(tmp_path: Path) -> None:
    warnings: list[str] = []
    env = core_tools_environment(
        tmp_path,
        80,
        {"AZURE_FUNCTIONS_ENVIRONMENT": "Production", "": "x", "N": None, "A": "1"},
        environ={"AZURE_FUNCTIONS_ENVIRONMENT": "Staging", "FUNCTIONS_CORETOOLS_ENVIRONMENT": "0"},
        warn=warnings.append,
    )
    assert env["AZURE_FUNCTIONS_ENVIRONMENT"] == "Staging"  # the real environment wins
    assert env["FUNCTIONS_CORETOOLS_ENVIRONMENT"] == "0"  # set only when not set
    assert env["WEBSITE_HOSTNAME"] == "localhost"  # Uri.Authority drops :80
    assert (env["A"], "N" in env) == ("1", False)
    assert warnings == [
        "AZURE_FUNCTIONS_ENVIRONMENT already exists with value 'Production', overriding to"
        " 'Development'.",
        # then in the order of Values (a replaced entry keeps its place, as in a Dictionary)
        "Skipping 'AZURE_FUNCTIONS_ENVIRONMENT' from local settings as it's already defined"
        " in current environment variables.",
        "Skipping local setting with empty key.",
        "Skipping 'N' because value is null",
    ]


def test_core_tools_environment_respects_host_json_logging(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text(
        "{'version': '2.0', logging: {LOGLEVEL: {function: 'Warning'}}}"
    )
    env = core_tools_environment(tmp_path, environ={})
    assert "AzureFunctionsJobHost__logging__logLevel__Function" not in env
    assert env["PYTHON_ENABLE_DEBUG_LOGGING"] == "1"
    assert env["AzureWebJobsScriptRoot"] == str(tmp_path)


@pytest.mark.parametrize("name", ["WEBSITE_HOSTNAME", "AzureWebJobsScriptRoot"])
def test_values_naming_what_core_tools_adds_stop_it(tmp_path: Path, name: str) -> None:
    # GetConfigurationSettings: Dictionary.Add of a key the Values already hold throws
    with pytest.raises(CoreToolsError, match=f"'{name}' in Values"):
        core_tools_environment(tmp_path, settings={name: "x"}, environ={})


def fake_pythons(directory: Path, versions: dict[str, str]) -> str:
    directory.mkdir()
    for name, version in versions.items():
        script = directory / name
        script.write_text(f"#!/bin/sh\necho 'Python {version}'\n")
        script.chmod(0o755)
    return str(directory)


def test_a_python_app_gets_the_python_core_tools_finds(tmp_path: Path) -> None:
    # PythonHelpers.GetEnvironmentPythonVersion: python3, python, python3.9 … in that order,
    # the first supported (3.9-3.14) wins; its version is always FUNCTIONS_WORKER_RUNTIME_VERSION
    path = fake_pythons(tmp_path / "bin", {"python3": "3.8.10", "python": "3.12.1"})
    env = core_tools_environment(
        tmp_path,
        settings={"FUNCTIONS_WORKER_RUNTIME": "python"},
        environ={"PATH": path, "FUNCTIONS_WORKER_RUNTIME_VERSION": "3.7"},
    )
    assert env["languageWorkers:python:defaultExecutablePath"] == "python"
    assert env["FUNCTIONS_WORKER_RUNTIME_VERSION"] == "3.12"
    chosen = core_tools_environment(
        tmp_path,
        environ={
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "languageWorkers__python__defaultExecutablePath": sys.executable,
        },
    )
    assert "languageWorkers:python:defaultExecutablePath" not in chosen
    assert chosen["FUNCTIONS_WORKER_RUNTIME_VERSION"] == "{}.{}".format(*sys.version_info)
    other = core_tools_environment(tmp_path, environ={"FUNCTIONS_WORKER_RUNTIME": "node"})
    assert "FUNCTIONS_WORKER_RUNTIME_VERSION" not in other


def test_a_python_app_without_a_supported_python_stops_func_start(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path / "bin", {"python3": "3.8.10", "python": "2.7.18"})
    environ = {"PATH": path, "FUNCTIONS_WORKER_RUNTIME": "python"}
    with pytest.raises(CoreToolsError, match=r"3\.9 to 3\.14: python3 is 3\.8, python is 2\.7"):
        core_tools_environment(tmp_path, environ=environ)
    with pytest.raises(CoreToolsError, match=r"none of .* is on PATH"):
        core_tools_environment(tmp_path, environ={**environ, "PATH": str(tmp_path / "none")})
