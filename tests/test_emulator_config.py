"""worker.config.json read as the host reads it: schema, profiles, languageWorkers settings,
and the argv and environment the host builds from it."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit import HostArgs
from workerkit.emulator import WorkerConfig, WorkerConfigError, read_worker_config
from workerkit.emulator._config import parse_timespan
from workerkit.emulator._launch import split_dotnet_arguments

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


def test_property_names_are_case_insensitive_and_json_scalars_become_strings(
    tmp_path: Path,
) -> None:
    config = read(
        tmp_path,
        {"Description": {"LANGUAGE": "x", "defaultexecutablepath": "run", "workerIndexing": True}},
        worker_file=None,
    )
    assert (config.language, config.executable, config.worker_indexing) == ("x", "run", True)
    assert config.worker_path is None
    assert config.command(ARGS) == ["run", *CONNECTION]


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
