"""The function app on disk: function.json discovery, host.json, local.settings.json."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._types import FUNCTION_ID_NAMESPACE
from workerkit.emulator import (
    AppError,
    FunctionSpec,
    discover_functions,
    functions_from_metadata,
    read_host_json,
    read_local_settings,
)
from workerkit.emulator._validation import metadata_string

HTTP = [
    {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]},
    {"type": "http", "direction": "out", "name": "$return"},
]


def function(app: Path, name: str, config: Any, files: tuple[str, ...] = ("run.txt",)) -> Path:
    folder = app / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        (folder / file).write_text("x")
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "function.json").write_text(text)
    return folder


def only_error(app: Path, extensions: tuple[str, ...] = ()) -> AppError:
    functions, errors = discover_functions(app, extensions)
    assert functions == [] and len(errors) == 1, (functions, errors)
    return errors[0]


def test_a_function_is_read_with_its_defaults(tmp_path: Path) -> None:
    folder = function(tmp_path, "Hello", {"bindings": HTTP, "entryPoint": "main"})
    (tmp_path / "not-a-function").mkdir()
    functions, errors = discover_functions(tmp_path)
    assert errors == []
    (spec,) = functions
    assert (spec.name, spec.directory, spec.script_file) == ("Hello", folder, folder / "run.txt")
    assert (spec.entry_point, spec.disabled) == ("main", False)
    assert spec.trigger["type"] == "httpTrigger"
    assert spec.function_id == str(uuid.uuid5(FUNCTION_ID_NAMESPACE, "hello"))


def test_the_load_request_is_shaped_like_the_hosts(tmp_path: Path) -> None:
    bindings = [
        {"type": "queueTrigger", "direction": "in", "name": "msg", "dataType": "binary"},
        {"type": "blob", "direction": "out", "name": "copy", "path": "x/{id}"},
    ]
    function(  # "disabled" in function.json: the v2+ host never reads it
        tmp_path,
        "copy",
        {"bindings": bindings, "disabled": True, "configurationSource": "attributes"},
    )
    (spec,) = discover_functions(tmp_path)[0]
    assert not spec.disabled
    spec = dataclasses.replace(spec, disabled=True)  # AzureWebJobs.copy.Disabled, as applied
    request = spec.load_request()
    assert request.function_id == spec.function_id
    metadata = request.metadata
    assert metadata is not None
    assert (metadata.name, metadata.directory) == ("copy", str(tmp_path / "copy"))
    assert metadata.script_file == str(tmp_path / "copy" / "run.txt")
    assert metadata.bindings == {
        "msg": pb.BindingInfo(
            type="queueTrigger",
            direction=pb.BindingInfoDirection.in_,
            data_type=pb.BindingInfoDataType.binary,
        ),
        "copy": pb.BindingInfo(type="blob", direction=pb.BindingInfoDirection.out),
    }
    assert metadata.properties == {
        "FunctionId": spec.function_id,
        "IsDisabled": "True",
        "IsDirect": "True",
    }
    assert metadata.raw_bindings == [] and metadata.function_id == "" and metadata.language == ""


def test_the_primary_script_is_found_like_the_host_finds_it(tmp_path: Path) -> None:
    function(tmp_path, "one", {"bindings": HTTP}, files=("only.py",))
    function(tmp_path, "run", {"bindings": HTTP}, files=("a.txt", "run.js"))
    function(tmp_path, "init", {"bindings": HTTP}, files=("a.txt", "__init__.py"))
    function(tmp_path, "upward", {"bindings": HTTP, "scriptFile": "../shared/main.py"}, files=())
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "main.py").write_text("")
    found = {f.name: f.script_file.name for f in discover_functions(tmp_path)[0]}
    assert found == {"init": "__init__.py", "one": "only.py", "run": "run.js", "upward": "main.py"}


@pytest.mark.parametrize(
    ("name", "config", "files", "reason"),
    [
        ("f", "{", ("run.txt",), "not valid JSON"),
        ("f", "[]", ("run.txt",), "the top level must be a JSON object"),
        ("f", {}, ("run.txt",), "At least one binding must be declared."),
        ("f", {"bindings": []}, ("run.txt",), "At least one binding must be declared."),
        ("f", {"bindings": {}}, ("run.txt",), "'bindings' must be an array"),
        (
            "f",
            {"bindings": [1]},
            ("run.txt",),
            "Unable to cast object of type 'Newtonsoft.Json.Linq.JValue' to type",
        ),
        ("1f", {"bindings": HTTP}, ("run.txt",), "'1f' is not a valid function name."),
        ("host", {"bindings": HTTP}, ("run.txt",), "'host' is not a valid function name."),
        (
            "f",
            {"bindings": [{**HTTP[0], "name": "my_req"}, HTTP[1]]},
            ("run.txt",),
            "The binding name my_req is invalid",
        ),
        (
            "f",
            {"bindings": [HTTP[0], {**HTTP[1], "direction": "in"}]},
            ("run.txt",),
            "$return bindings must specify a direction of 'out'.",
        ),
        (
            "f",
            {"bindings": [HTTP[0], {"direction": "out", "name": "res"}]},
            ("run.txt",),
            "Bindings must specify a Type.",
        ),
        (
            "f",
            {"bindings": [HTTP[0], {**HTTP[1], "name": "REQ"}]},
            ("run.txt",),
            "Multiple bindings with name 'REQ' discovered.",
        ),
        (
            "f",
            {"bindings": [HTTP[0], {**HTTP[0], "name": "b"}]},
            ("run.txt",),
            "Multiple trigger bindings defined.",
        ),
        ("f", {"bindings": [HTTP[1]]}, ("run.txt",), "No trigger binding specified."),
        (
            "f",
            {"bindings": [{**HTTP[0], "direction": "sideways"}]},
            ("run.txt",),
            "'sideways' is not a valid binding direction.",
        ),
        (
            "f",
            {"bindings": [{**HTTP[0], "dataType": "float"}]},
            ("run.txt",),
            'Error converting value "float" to type',
        ),
        (
            "f",
            {"bindings": HTTP, "scriptFile": "nope.txt"},
            ("run.txt",),
            "set to a file that does not exist",
        ),
        ("f", {"bindings": HTTP, "scriptFile": 3}, ("run.txt",), "'scriptFile' must be a string"),
        (
            "f",
            {"bindings": HTTP, "scriptFile": "../../etc/passwd"},
            ("run.txt",),
            "points outside the function app directory",
        ),
        (
            "f",
            {"bindings": HTTP, "scriptFile": "/etc/hostname"},
            ("run.txt",),
            "points outside the function app directory",
        ),
        (
            "f",
            {"bindings": HTTP},
            ("a.txt", "b.txt"),
            "Unable to determine the primary function script",
        ),
        ("f", {"bindings": HTTP}, (), "Unable to determine the primary function script"),
        (
            "f",
            {"bindings": HTTP, "configurationSource": "magic"},
            ("run.txt",),
            "Illegal value 'magic'",
        ),
        ("f", {"bindings": HTTP, "entryPoint": 1}, ("run.txt",), "'entryPoint' must be a string"),
    ],
)
def test_rejected_functions_name_the_file_and_the_reason(
    tmp_path: Path, name: str, config: Any, files: tuple[str, ...], reason: str
) -> None:
    function(tmp_path, name, config, files)
    function(tmp_path, "fine", {"bindings": HTTP})
    functions, errors = discover_functions(tmp_path)
    assert [f.name for f in functions] == ["fine"]
    (error,) = errors
    assert str(error).startswith(str(tmp_path / name / "function.json") + ": ")
    assert reason in error.reason
    assert error.function == name


def test_a_folder_that_cannot_be_read_is_no_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host asks File.Exists(<folder>/function.json), false when the folder cannot be
    read (a cache owned by another user): no function there, no traceback. The file system
    refuses here as it does for a folder without permissions (which root would ignore)."""
    function(tmp_path, "good", {"bindings": HTTP})
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    functions, errors = discover_functions(tmp_path)
    assert [f.name for f in functions] == ["good"] and errors == []


def test_functions_of_other_languages_are_reported(tmp_path: Path) -> None:
    function(tmp_path, "js", {"bindings": HTTP}, files=("index.js",))
    error = only_error(tmp_path, (".py",))
    assert "does not list in 'extensions'" in error.reason
    assert [f.name for f in discover_functions(tmp_path, (".js",))[0]] == ["js"]


def test_worker_indexed_functions_are_validated(tmp_path: Path) -> None:
    good = pb.RpcFunctionMetadata(
        name="good",
        function_id="id-1",
        directory=str(tmp_path),
        script_file="main.fn",
        raw_bindings=[json.dumps(b) for b in HTTP],
        properties={"worker_indexed": "True"},
    )
    failed = pb.RpcFunctionMetadata(
        name="failed",
        script_file="x",
        status=pb.StatusResult(
            status=pb.StatusResultStatus.Failure, exception=pb.RpcException(message="nope")
        ),
    )
    no_script = pb.RpcFunctionMetadata(name="noscript", raw_bindings=[json.dumps(b) for b in HTTP])
    bad_name = pb.RpcFunctionMetadata(
        name="bad name", script_file="x", raw_bindings=[json.dumps(HTTP[0])]
    )
    not_json = pb.RpcFunctionMetadata(name="notjson", script_file="x", raw_bindings=["{"])
    functions, errors = functions_from_metadata(
        [good, failed, no_script, bad_name, not_json], tmp_path
    )
    (spec,) = functions
    assert (spec.function_id, spec.script_file, spec.properties) == (
        "id-1",
        Path("main.fn"),
        {"worker_indexed": "True"},
    )
    assert spec.load_request().metadata.properties == {
        "FunctionId": "id-1",
        "worker_indexed": "True",
    }  # type: ignore[union-attr]
    reasons = {e.function: e.reason for e in errors}
    assert "the worker reported a failure: nope" in reasons["failed"]
    assert "Unable to determine the primary function script" in reasons["noscript"]
    assert "is not a valid function name" in reasons["bad name"]
    assert "is not JSON" in reasons["notjson"]


def test_a_workers_raw_bindings_are_read_as_jobject_parse_reads_them(tmp_path: Path) -> None:
    """WorkerFunctionMetadataProvider: JObject.Parse(binding) for each raw binding, so
    Newtonsoft's dialect and its depth limit apply, as to function.json."""
    lenient = [
        "{type: 'httpTrigger', direction: 'in', name: 'req', /* note */}",
        json.dumps(HTTP[1]),
    ]
    deep = ['{"type": "httpTrigger", "direction": "in", "name": "req", "x": ' + "[" * 100_000]
    functions, errors = functions_from_metadata(
        [
            pb.RpcFunctionMetadata(name="lenient", script_file="x", raw_bindings=lenient),
            pb.RpcFunctionMetadata(name="deep", script_file="x", raw_bindings=deep),
        ],
        tmp_path,
    )
    assert [f.name for f in functions] == ["lenient"]
    assert functions[0].trigger_type == "httpTrigger"
    (error,) = errors
    assert error.function == "deep" and "deeper than 64 levels" in error.reason


# -- host.json and local.settings.json -----------------------------------------------------------
def write_host(app: Path, document: Any) -> None:
    app.mkdir(parents=True, exist_ok=True)
    (app / "host.json").write_text(document if isinstance(document, str) else json.dumps(document))


def test_host_json(tmp_path: Path) -> None:
    write_host(tmp_path, {"version": "2.0"})
    settings = read_host_json(tmp_path)
    assert (settings.route_prefix, settings.function_timeout, settings.functions) == (
        "api",
        300.0,
        None,
    )
    write_host(
        tmp_path,
        {
            "version": "2.0",
            "functionTimeout": "00:00:30",
            "extensions": {"http": {"routePrefix": "/v1/"}},
            "functions": ["a"],
        },
    )
    settings = read_host_json(tmp_path)
    assert (settings.route_prefix, settings.function_timeout, settings.functions) == (
        "v1",
        30.0,
        ("a",),
    )
    write_host(
        tmp_path,
        {"version": "2.0", "functionTimeout": "-1", "extensions": {"http": {"routePrefix": ""}}},
    )
    assert (read_host_json(tmp_path).route_prefix, read_host_json(tmp_path).function_timeout) == (
        "",
        None,
    )


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        ({}, (None, None)),
        ({"maxConcurrentRequests": 4, "maxOutstandingRequests": 10}, (4, 10)),
        ({"MaxConcurrentRequests": "4", "maxoutstandingrequests": " 10 "}, (4, 10)),
        ({"maxConcurrentRequests": -1, "maxOutstandingRequests": "-1"}, (None, None)),
    ],
)
def test_host_json_http_throttles(
    tmp_path: Path, http: dict[str, Any], expected: tuple[int | None, int | None]
) -> None:
    write_host(tmp_path, {"version": "2.0", "extensions": {"http": http}})
    settings = read_host_json(tmp_path)
    assert (settings.max_concurrent_requests, settings.max_outstanding_requests) == expected


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{", "not valid JSON"),
        ("[]", "the top level must be a JSON object"),
        ({"Version": "2.0"}, "missing the required 'version' property"),  # {}: defaults
        ({"version": "1.0"}, "invalid value for host.json 'version'"),
        ({"version": "2.0", "functionTimeout": 5}, "TimeSpan string"),
        ({"version": "2.0", "functionTimeout": "soon"}, "is not a TimeSpan"),
        ({"version": "2.0", "functionTimeout": "00:00:00.5"}, "greater than 00:00:01"),
        ({"version": "2.0", "functionTimeout": "1" + "0" * 400}, "out of range"),  # no crash
        (
            {"version": "2.0", "extensions": {"http": {"routePrefix": 1}}},
            "routePrefix must be a string",
        ),
        ({"version": "2.0", "functions": "a"}, "'functions' must be an array"),
        *(
            (
                {"version": "2.0", "extensions": {"http": {name: value}}},
                f"extensions.http.{name} must be a positive integer or -1",
            )
            for name, value in [
                ("maxConcurrentRequests", 0),
                ("maxOutstandingRequests", -2),
                ("maxOutstandingRequests", "many"),
                ("maxConcurrentRequests", 1.5),
                ("maxConcurrentRequests", True),
                ("maxConcurrentRequests", "--1"),
            ]
        ),
    ],
)
def test_host_json_rejections(tmp_path: Path, document: Any, reason: str) -> None:
    write_host(tmp_path, document)
    with pytest.raises(AppError, match=r"host\.json: ") as info:
        read_host_json(tmp_path)
    assert reason in info.value.reason


def test_a_missing_host_json(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="not a function app directory"):
        read_host_json(tmp_path)


def test_local_settings(tmp_path: Path) -> None:
    assert read_local_settings(tmp_path).values == {}
    (tmp_path / "local.settings.json").write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"A": "1", "B": 2, "C": True, "D": None},
                "Host": {"LocalHttpPort": 7072},
            }
        )
    )
    settings = read_local_settings(tmp_path)
    assert dict(settings.values) == {"A": "1", "B": "2", "C": "True"}
    assert settings.local_http_port == 7072


def test_a_number_newtonsoft_cannot_read_is_a_warning(tmp_path: Path) -> None:
    """Newtonsoft reads hexadecimal with Convert.ToInt64: 4000 digits overflow it (the
    emulator once crashed turning that number into the setting's text)."""
    (tmp_path / "local.settings.json").write_text('{"Values": {"BIG": 0x' + "f" * 4000 + "}}")
    settings = read_local_settings(tmp_path)
    assert settings.values == {} and "is not a number" in settings.warnings[0]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        # a file Core Tools cannot read is a warning: tests/test_emulator_files.py
        ({"IsEncrypted": True, "Values": {}}, "encrypted"),
    ],
)
def test_local_settings_rejections(tmp_path: Path, document: Any, reason: str) -> None:
    (tmp_path / "local.settings.json").write_text(
        document if isinstance(document, str) else json.dumps(document)
    )
    with pytest.raises(AppError, match=r"local\.settings\.json: ") as info:
        read_local_settings(tmp_path)
    assert reason in info.value.reason


def test_function_spec_is_importable_and_typed() -> None:
    spec = FunctionSpec("f", Path("/a/f"), Path("/a/f/run.txt"), "", tuple(HTTP))
    assert spec.trigger_type == "httpTrigger"
    assert FunctionSpec.__module__ == "workerkit.emulator"


def test_the_public_names_are_sorted_and_present() -> None:
    import workerkit.emulator

    assert list(workerkit.emulator.__all__) == sorted(workerkit.emulator.__all__)
    for name in workerkit.emulator.__all__:
        assert getattr(workerkit.emulator, name) is not None


def test_a_setting_the_os_refuses_ends_start_up_with_the_reason(tmp_path: Path) -> None:
    """A value the OS cannot put in an environment (a NUL byte) fails every launch; the
    emulator must say so and exit, not wait forever for a worker."""
    import json
    import shutil
    import subprocess
    import sys

    templates = Path(__file__).resolve().parent.parent / "examples" / "templates"
    worker_dir = tmp_path / "worker"
    shutil.copytree(templates, worker_dir, ignore=shutil.ignore_patterns("app", "__pycache__"))
    config = json.loads((worker_dir / "worker.config.json").read_text())
    config["description"]["defaultExecutablePath"] = sys.executable
    config["processOptions"]["processRestartInterval"] = "00:00:00"
    (worker_dir / "worker.config.json").write_text(json.dumps(config))
    app = tmp_path / "app"
    shutil.copytree(templates / "app", app)
    (app / "local.settings.json").write_text(json.dumps({"Values": {"BROKEN": "a\u0000b"}}))
    done = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker_dir),
         "--port", "0", "--no-color"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "null byte" in done.stdout + done.stderr


def test_functions_come_in_the_hosts_order(tmp_path: Path) -> None:
    """FunctionMetadataManager sorts by name with StringComparer.OrdinalIgnoreCase, which
    compares upper-cased text: "alpha" ("ALPHA") before "a_b" ("A_B"), since "L" < "_"
    (lower-cased, "_" would come first)."""
    for name in ("a_b", "aB", "Zed", "alpha"):
        function(tmp_path, name, {"bindings": HTTP})
    assert [f.name for f in discover_functions(tmp_path)[0]] == ["aB", "alpha", "a_b", "Zed"]


def test_function_json_keys_the_host_reads_exactly_and_in_any_case(tmp_path: Path) -> None:
    """HostFunctionMetadataProvider.ParseFunctionMetadata: configMetadata["bindings"],
    ["scriptFile"], ["entryPoint"] are exact; "configurationSource" is found in any case;
    binding keys in any case (ScriptBindingContext)."""
    function(
        tmp_path,
        "cased",
        {
            "bindings": [{"Type": "HTTPTRIGGER", "Direction": "IN", "Name": "req", "Route": "r"}],
            "ScriptFile": "nope.txt",  # not read: the one file in the folder is the script
            "EntryPoint": "ignored",
            "ConfigurationSource": "Attributes",
        },
    )
    function(tmp_path, "capital", {"Bindings": HTTP})
    functions, errors = discover_functions(tmp_path)
    (spec,) = functions
    assert (spec.script_file.name, spec.entry_point, spec.is_direct) == ("run.txt", "", True)
    assert (spec.trigger["route"], spec.trigger_type) == ("r", "HTTPTRIGGER")
    assert spec.load_request().metadata.bindings["req"] == pb.BindingInfo(  # type: ignore[union-attr]
        type="HTTPTRIGGER", direction=pb.BindingInfoDirection.in_
    )
    (error,) = errors
    assert error.function == "capital" and error.reason == "At least one binding must be declared."


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ({"authLevel": "superuser"}, "of enum type AuthorizationLevel."),
        ({"AUTHLEVEL": ["anonymous"]}, "binding property 'authLevel' of type String."),
        ({"methods": "get"}, "binding property 'methods' of type JArray."),
        ({"methods": [{"x": 1}]}, "Cannot cast Newtonsoft.Json.Linq.JObject"),
        ({"route": {"x": 1}}, "binding property 'route' of type String."),
        ({"cardinality": "lots"}, 'Error converting value "lots" to type'),
    ],
)
def test_http_trigger_properties_the_host_refuses(
    tmp_path: Path, binding: dict[str, Any], reason: str
) -> None:
    """HttpScriptBinding.GetAttributes and BindingMetadata's enum converters."""
    function(tmp_path, "f", {"bindings": [{**HTTP[0], **binding}, HTTP[1]]})
    error = only_error(tmp_path)
    assert reason in error.reason


@pytest.mark.parametrize(
    "binding",
    [
        {"authLevel": "Anonymous"},
        {"authLevel": "FUNCTION"},
        {"authLevel": "4"},
        {"authLevel": ""},
        {"direction": "In", "dataType": "String", "cardinality": "ONE"},
        {"direction": 0},
        {"methods": ["get", 5, None]},
    ],
)
def test_http_trigger_properties_the_host_accepts(tmp_path: Path, binding: dict[str, Any]) -> None:
    function(tmp_path, "f", {"bindings": [{**HTTP[0], **binding}, HTTP[1]]})
    functions, errors = discover_functions(tmp_path)
    assert errors == [] and [f.name for f in functions] == ["f"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2"), (1e-7, "1E-07"), (float("nan"), "NaN"), (True, "True"), (7, "7"), (None, None)],
)
def test_binding_values_read_as_strings_are_dotnets_text(value: Any, text: str | None) -> None:
    """GetMetadataValue<string>: JToken.Value<string>(), Convert.ChangeType with the
    invariant culture ("route": 2.0 is the route "2")."""
    assert metadata_string({"Route": value}, "route") == text


def test_an_inout_trigger_is_a_trigger_and_an_out_one_is_not(tmp_path: Path) -> None:
    """FunctionMetadata.InputBindings: every binding whose direction is not "out"."""
    function(tmp_path, "inout", {"bindings": [{**HTTP[0], "direction": "inout"}, HTTP[1]]})
    function(tmp_path, "out", {"bindings": [{**HTTP[0], "direction": "out"}, HTTP[1]]})
    functions, errors = discover_functions(tmp_path)
    assert [f.name for f in functions] == ["inout"]
    assert [e.reason for e in errors] == [
        "No trigger binding specified. A function must have a trigger input binding."
    ]


def test_an_empty_binding_type_is_no_registered_type(tmp_path: Path) -> None:
    """Only a missing type is "must specify a Type" (ValidateBinding); "" reaches
    FunctionDescriptorProvider.VerifyResolvedBindings, which finds no extension for it."""
    function(tmp_path, "f", {"bindings": [HTTP[0], {**HTTP[1], "type": ""}]})
    assert "The binding type(s) '' are not registered." in only_error(tmp_path).reason
