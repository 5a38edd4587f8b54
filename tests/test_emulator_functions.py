"""function.json, bindings and routes read the way the real host reads them (issue #14, items 2-7,
9, 11, 12), end to end: a real `workerkit host` (in-process `Emulator` serving real HTTP on
127.0.0.1, or the ``workerkit host`` command) with tests/emulator_worker.py as its worker.

Each test names the host code it follows; the facts are in the emulator modules' docstrings
(`_httproutes`, `_routes`, `_constraints`, `_validation`, `_cron`).
"""

from __future__ import annotations

import decimal
import json
import os
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from emulator_support import (
    RunningEmulator,
    http_function,
    trigger_function,
    write_app,
    write_worker,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit.emulator import EmulatorError, EmulatorOptions
from workerkit.emulator._dotnet import (
    DECIMAL_MAX,
    is_bool,
    is_decimal,
    is_double,
    is_guid,
    parse_enum,
    parse_integer,
)
from workerkit.emulator._dotnetdate import is_datetime
from workerkit.emulator._routes import Route, RouteEntry, RouteError, RouteMatch, Router
from workerkit.emulator._validation import BindingConfig

ANONYMOUS = {"authLevel": "anonymous"}
AUTH_LEVELS = ("Anonymous", "User", "Function", "System", "Admin")


def function(*bindings: Mapping[str, Any], **top: Any) -> dict[str, Any]:
    """A function.json with these bindings, run by tests/emulator_worker.py."""
    return {"scriptFile": "run.txt", "bindings": list(bindings), **top}


def http_out(name: str = "$return", kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "direction": "out", "name": name}


def trigger(**properties: Any) -> dict[str, Any]:
    return {"type": "httpTrigger", "direction": "in", "name": "req", **ANONYMOUS, **properties}


def running(
    tmp_path: Path,
    functions: Mapping[str, Any],
    *,
    host: Mapping[str, Any] | None = None,
    settings: Mapping[str, str] | None = None,
) -> RunningEmulator:
    app = write_app(tmp_path, functions, host=host, settings=settings)
    options = EmulatorOptions(app, write_worker(tmp_path), port=0, environ=os.environ)
    return RunningEmulator(options).start()


@pytest.fixture
def stop() -> Iterator[list[RunningEmulator]]:
    """Emulators to stop after the test, whatever happened."""
    started: list[RunningEmulator] = []
    yield started
    for emulator in started:
        if emulator.start_error is None:
            assert emulator.stop() == 0


def error_line(emulator: RunningEmulator, function_name: str) -> str:
    """The start-up error reported for `function_name`."""
    marker = f"{function_name}: "
    lines = [
        line.strip() for line in emulator.output.splitlines() if line.strip().startswith(marker)
    ]
    assert lines, f"no error for {function_name}:\n{emulator.output}"
    return lines[0]


def echoed(emulator: RunningEmulator, method: str, path: str) -> dict[str, Any]:
    reply = emulator.request(method, path)
    assert reply.status == 200, (reply.status, reply.text, emulator.output)
    result: dict[str, Any] = reply.json()
    return result


# -- item 2: timer schedules ------------------------------------------------------------------
def test_five_field_cron_and_setting_tokens_inside_a_schedule(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """EXT Timers/Scheduling/CronSchedule.TryCreate (five fields: no seconds) and the SDK's
    NameResolverExtensions.ResolveWholeString (every %token%, not only a whole-string one)."""
    timers = {
        "fivefield": trigger_function({"type": "timerTrigger", "schedule": "*/5 * * * *"}),
        "tokens": trigger_function({"type": "timerTrigger", "schedule": "*/%TICK% * * * * *"}),
        "unresolved": trigger_function({"type": "timerTrigger", "schedule": "0 %NOPE% * * * *"}),
    }
    emulator = running(tmp_path, timers, settings={"TICK": "1"})
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert "fivefield: timerTrigger (*/5 * * * *)" in emulator.output
    assert "tokens: timerTrigger (*/1 * * * * *)" in emulator.output
    assert "'%NOPE%' does not resolve to a value." in error_line(emulator, "unresolved")
    emulator.wait_for(lambda _: len(emulator.records("tokens")) >= 2, what="two ticks")


# -- item 3: a route starting with "/" under a prefix --------------------------------------------
def test_a_route_starting_with_a_slash_stops_workerkit_host(tmp_path: Path) -> None:
    """WebJobsRouteBuilder.BuildRouteTemplate joins "api", "/" and "/hello" into api//hello,
    which ASP.NET's RoutePatternParser refuses; the host maps routes in
    ScriptHost.OnHostInitialized, so the whole host fails to start (not one function), and so
    does ``workerkit host``, naming the file."""
    app = write_app(
        tmp_path,
        {"hello": http_function(route="/hello"), "other": http_function()},
    )
    done = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker",
         str(write_worker(tmp_path)), "--port", "0", "--no-color"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert str(app / "hello" / "function.json") in output
    assert "template 'api//hello'" in output
    assert "The route template separator character '/' cannot appear consecutively" in output


def test_without_a_prefix_a_leading_slash_is_fine(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """With ``"routePrefix": ""`` the template is the route alone, and ASP.NET drops one
    leading "/"."""
    host = {"extensions": {"http": {"routePrefix": ""}}}
    emulator = running(tmp_path, {"echo": http_function(["get"], route="/hello")}, host=host)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/hello")["method"] == "GET"


# -- items 4-6 --------------------------------------------------------------------------------
def test_disabled_in_function_json_is_ignored_only_the_setting_disables(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """HostFunctionMetadataProvider.ParseFunctionMetadata never reads "disabled"; the SDK's
    HostListenerFactory.IsDisabled reads AzureWebJobs.<name>.Disabled or
    AzureWebJobs_<name>_Disabled ("1" or "true", any case)."""
    functions = {
        "echo-flag": http_function(["get"], disabled=True),
        "echo-one": http_function(["get"], disabled=1),
        "echo-dots": http_function(["get"]),
        "echo-underscores": http_function(["get"]),
    }
    settings = {
        "AzureWebJobs.echo-dots.Disabled": "TRUE",
        "AzureWebJobs_echo-underscores_Disabled": "1",
    }
    emulator = running(tmp_path, functions, settings=settings)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert "functions are in error" not in emulator.output
    assert echoed(emulator, "GET", "/api/echo-flag")["method"] == "GET"
    assert echoed(emulator, "GET", "/api/echo-one")["method"] == "GET"
    assert emulator.request("GET", "/api/echo-dots").status == 404
    assert emulator.request("GET", "/api/echo-underscores").status == 404
    assert "echo-dots: [GET]" in emulator.output and "(disabled)" in emulator.output


def test_routes_in_the_hosts_built_in_space_are_refused(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """ScriptHost.ValidateHttpFunction: the route (or, without one, the function name), "/"
    trimmed and lower-cased, must not start with "admin" or "runtime"."""
    functions = {
        "adminpanel": http_function(["get"]),
        "echo-runtime": http_function(["get"], route="/Runtime/status"),
        "echo-administrator": http_function(["get"], route="administrator"),
        "echo-fine": http_function(["get"], route="my/admin"),
    }
    host = {"extensions": {"http": {"routePrefix": ""}}}
    emulator = running(tmp_path, functions, host=host)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    message = "The specified route conflicts with one or more built in routes."
    for name in ("adminpanel", "echo-runtime", "echo-administrator"):
        assert message in error_line(emulator, name)
    assert emulator.request("GET", "/administrator").status == 404
    assert echoed(emulator, "GET", "/my/admin")["method"] == "GET"


def test_an_empty_or_blank_route_means_the_function_name(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """ScriptHost.ValidateHttpFunction: string.IsNullOrWhiteSpace(route) → the function name."""
    functions = {
        "echo-empty": http_function(["get"], route=""),
        "echo-blank": http_function(["get"], route="  "),
    }
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/api/echo-empty")["method"] == "GET"
    assert echoed(emulator, "GET", "/api/echo-blank")["method"] == "GET"
    assert emulator.request("GET", "/api/").status == 404


# -- item 7: keys and types in any case ----------------------------------------------------------
def test_binding_keys_and_types_in_any_case(tmp_path: Path, stop: list[RunningEmulator]) -> None:
    """ScriptBindingContext.GetMetadataValue finds binding keys in any case; binding types
    compare ignoring case (WebJobsCoreScriptBindingProvider, FunctionBinding.GetBindings); an
    output typed "Http" is the HTTP response, which workerkit's own worker side must also see
    (workerkit/_runtime/invoking.py)."""
    cased = {
        "Type": "HttpTrigger",
        "Direction": "In",
        "Name": "req",
        "Route": "Greet/{who}",
        "Methods": ["GET"],
        "AuthLevel": "Anonymous",
    }
    timer = {"Type": "TimerTrigger", "Schedule": "0 0 0 1 1 *", "RunOnStartup": True}
    functions = {
        "echo-cased": function(cased, {"Type": "Http", "Direction": "Out", "Name": "res"}),
        "tick-cased": trigger_function(timer),
        # top-level keys are read exactly: "Bindings" is no "bindings"
        "capital": {"scriptFile": "run.txt", "Bindings": [trigger(), http_out()]},
    }
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/api/greet/ada")["params"] == {"who": "ada"}
    assert emulator.request("GET", "/api/echo-cased").status == 404
    assert "tick-cased: timerTrigger (0 0 0 1 1 *, runOnStartup)" in emulator.output
    emulator.wait_for(lambda _: bool(emulator.records("tick-cased")), what="the startup run")
    assert "At least one binding must be declared." in error_line(emulator, "capital")


# -- item 9: constraints ----------------------------------------------------------------------
def test_regex_constraints_double_their_braces_and_ignore_case(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """RoutePatternParser decodes "{{"/"}}" inside a parameter; RegexRouteConstraint uses
    RegexOptions.IgnoreCase."""
    functions = {"echo": http_function(["get"], route="codes/{code:regex(^[A-Z]{{3}}$)}")}
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/api/codes/ABC")["params"] == {"code": "ABC"}
    assert echoed(emulator, "GET", "/api/codes/abc")["params"] == {"code": "abc"}
    assert emulator.request("GET", "/api/codes/ABCD").status == 404


def test_an_unescaped_brace_in_a_constraint_stops_start_up(tmp_path: Path) -> None:
    """ "{d:regex(^\\d{3}$)}" is an unescaped brace to RoutePatternParser: the host's route
    mapping fails, so the host does not start."""
    functions = {"echo": http_function(["get"], route=r"d/{d:regex(^\d{3}$)}")}
    emulator = running(tmp_path, functions)
    assert isinstance(emulator.start_error, EmulatorError), emulator.output
    assert "'{' and '}' must be escaped with '{{' and '}}'" in str(emulator.start_error)


# -- item 11: conflicts and the order routes are tried in ------------------------------------------
def test_route_conflicts_compare_raw_routes_and_exact_methods(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """ScriptHost.HttpRoutesConflict: routes compared as text ("/" trimmed, any case), methods
    intersected exactly (LINQ Intersect); a missing "methods" is every method."""
    functions = {
        "echo-a": http_function(["get"], route="products/{id}"),
        "echo-b": http_function(["get"], route="products/{name}"),
        "echo-c": http_function(["GET"], route="items"),
        "echo-d": http_function(["get"], route="Items/"),
        "echo-e": http_function(None, route="things"),
        "echo-f": http_function(["post"], route="Things"),
    }
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    conflict = "The route specified conflicts with the route defined by function 'echo-e'."
    assert conflict in error_line(emulator, "echo-f")
    assert "The following 1 functions are in error" in emulator.output
    assert echoed(emulator, "GET", "/api/products/7")["params"] == {"id": "7"}  # echo-a first
    assert echoed(emulator, "GET", "/api/items")["method"] == "GET"


def test_routes_are_tried_in_function_name_order(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """The host adds one legacy ASP.NET Route per function, in the functions' name order, to a
    RouteCollection that takes the first match (WebJobsRouteBuilder.Build): a literal route
    does not win over a parameter just for being literal."""
    functions = {
        "echo-a": http_function(["get"], route="orders/{id}"),
        "echo-b": http_function(["get"], route="orders/new"),
        "echo-c": http_function(["post"], route="orders/{id}/x"),
        "echo-d": http_function(["get"], route="orders/{id}/x"),
    }
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/api/orders/new")["params"] == {"id": "new"}
    assert echoed(emulator, "GET", "/api/orders/1/x")["params"] == {"id": "1"}
    assert len(emulator.invocation_ids("echo-a")) == 1 and emulator.invocation_ids("echo-b") == []
    assert len(emulator.invocation_ids("echo-d")) == 1


# -- item 12: binding checks and .NET parsing of route values --------------------------------------
def test_bindings_the_host_refuses(tmp_path: Path, stop: list[RunningEmulator]) -> None:
    """HttpScriptBinding.GetAttributes (authLevel), BindingMetadata's StringEnumConverter
    (cardinality), FunctionBinding.GetBindings (http only as an output), Utility.
    ValidateRetryOptions (maxRetryCount)."""
    queue = {"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "q"}
    functions = {
        "echo-auth": function(trigger(authLevel="superuser"), http_out()),
        "echo-auth-ok": function(trigger(authLevel=" Function , Anonymous"), http_out()),
        "items": function({**queue, "cardinality": "several"}),
        "echo-inout": function(trigger(), http_out("res") | {"direction": "inout"}),
        "echo-retry": function(
            trigger(), http_out(), retry={"strategy": "fixedDelay", "delayInterval": "00:00:01"}
        ),
    }
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert (
        "Error parsing function.json: Invalid value specified for binding property 'authLevel'"
        " of enum type AuthorizationLevel."
    ) in error_line(emulator, "echo-auth")
    assert 'Error converting value "several" to type' in error_line(emulator, "items")
    assert "Cardinality" in error_line(emulator, "items")
    assert "Http binding can only be used for output." in error_line(emulator, "echo-inout")
    assert "Value cannot be null. (Parameter 'MaxRetryCount')" in error_line(emulator, "echo-retry")
    assert echoed(emulator, "GET", "/api/echo-auth-ok")["method"] == "GET"


GUID = "6f1c8a3e-1111-4a44-9b55-5a5a5a5a5a5a"


@pytest.mark.parametrize(
    ("constraint", "accepted", "refused"),
    [
        (
            "guid",
            [
                GUID.upper(),
                GUID.replace("-", ""),
                f"{{{GUID}}}",
                f"({GUID})",
                "{0x6f1c8a3e,0x1111,0x4a44,{0x9b,0x55,0x5a,0x5a,0x5a,0x5a,0x5a,0x5a}}",
            ],
            [GUID[:-1], f"urn:uuid:{GUID}", GUID.replace("-", "", 1) + "-", "6f1c-8a3e" + GUID[9:]],
        ),
        ("decimal", ["1,000.5", "-2", "3-", ".5", "7."], ["1e3", "1,5e2", "NaN", "--1", "."]),
        (
            "datetime",
            ["2024-01-31", "01-31-2024", "2024-01-31T10:00:00Z", "31 Jan 2024", "10:30 PM"],
            ["31.12.2024", "2023-02-29", "2024-01-31x", "25:00", "2024"],
        ),
        ("double", ["1e3", "-Infinity", "NaN", "1,000.5"], ["inf", "1_0", "0x10"]),
    ],
)
def test_route_values_are_parsed_as_dotnet_parses_them(
    tmp_path: Path,
    stop: list[RunningEmulator],
    constraint: str,
    accepted: list[str],
    refused: list[str],
) -> None:
    """aspnetcore Constraints/GuidRouteConstraint (Guid.TryParse), DecimalRouteConstraint
    (decimal.TryParse, NumberStyles.Number), DateTimeRouteConstraint (DateTime.TryParse),
    DoubleRouteConstraint (NumberStyles.Float | AllowThousands), invariant culture."""
    from urllib.parse import quote

    functions = {"echo": http_function(["get"], route=f"v/{{value:{constraint}}}")}
    emulator = running(tmp_path, functions)
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    for value in accepted:
        assert echoed(emulator, "GET", "/api/v/" + quote(value, safe=""))["params"] == {
            "value": value
        }, value
    for value in refused:
        assert emulator.request("GET", "/api/v/" + quote(value, safe="")).status == 404, value


def test_worker_indexed_functions_get_the_same_checks(
    tmp_path: Path, stop: list[RunningEmulator]
) -> None:
    """The host's ScriptHost.ValidateFunction runs for worker-indexed functions too."""
    index = [
        {"name": "echo-indexed", "bindings": [trigger(Route="Hello"), http_out()]},
        {"name": "adminthing", "bindings": [trigger(), http_out()]},
    ]
    app = write_app(tmp_path, {}, settings={"WK_INDEX": json.dumps(index)})
    worker = write_worker(tmp_path, description={"workerIndexing": "true"})
    emulator = RunningEmulator(EmulatorOptions(app, worker, port=0, environ=os.environ)).start()
    stop.append(emulator)
    assert emulator.start_error is None, emulator.output
    assert echoed(emulator, "GET", "/api/hello")["method"] == "GET"
    assert "built in routes" in error_line(emulator, "adminthing")


# -- the pure parts, without a host -----------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("img/{name}.{ext}", "img/cat.tar.gz", {"name": "cat.tar", "ext": "gz"}),  # right to left
        ("f/{name}.{ext?}", "f/notes", {"name": "notes", "ext": None}),
        ("f/{name}.{ext?}", "f/notes.txt", {"name": "notes", "ext": "txt"}),
        ("{a?}/b", "x/b", {"a": "x"}),  # ASP.NET allows it; it needs the value
        ("{a?}/b", "b", None),
        ("files/{*path}", "files/a/", {"path": "a/"}),  # a catch-all keeps the trailing slash
        ("files/{*path:int}", "files", None),  # an absent catch-all fails its constraints
        ("lit{{x}}/y", "lit{x}/y", {}),
        ("x/{v:INT}", "x/5", {"v": "5"}),  # constraint names ignore case
        ("x/{v:minlength(2)}", "x/\U0001f600", {"v": "\U0001f600"}),  # .NET counts UTF-16 units
        ("x/{v:length(1)}", "x/\U0001f600", None),
        ("x/{v:file}", "x/.gitignore", {"v": ".gitignore"}),
        ("x/{v:file}", "x/name.", None),
        ("x/{v:regex(^(?<y>\\d{{4}})$)}", "x/2024", {"v": "2024"}),  # .NET named groups
    ],
)
def test_route_matching_follows_aspnet(
    template: str, path: str, expected: dict[str, Any] | None
) -> None:
    """aspnetcore Patterns/RoutePatternParser, RouteParameterParser, RoutePatternMatcher."""
    assert Route.parse(template).match(path.split("/") if path else []) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a//b", "The route template separator character '/' cannot appear consecutively."),
        ("~x", "cannot start with a '~' character unless followed by a '/'"),
        ("{a}-{b?}", "the optional parameter 'b' is preceded by an invalid segment '-'"),
        ("{a?}.{b}", "optional parameter 'a' is followed by '.'"),
        ("{x:nosuch}", "The constraint entry 'x' - 'nosuch' on the route '{x:nosuch}'"),
        ("{x:range(5,1)}", "'Microsoft.AspNetCore.Routing.Constraints.RangeRouteConstraint'"),
        ("{x:int()}", "'IntRouteConstraint' with the following number of parameters: 1."),
        ("{x:regex(\\d{3})}", "In a route parameter, '{' and '}' must be escaped"),
        # Python's re cannot compile these (a RecursionError, an OverflowError before)
        (
            "{x:regex(" + "(" * 5000 + "a" + ")" * 5000 + ")}",
            "'Microsoft.AspNetCore.Routing.Constraints.RegexInlineRouteConstraint'",
        ),
        (
            "{x:regex(a{{99999999999}})}",
            "'Microsoft.AspNetCore.Routing.Constraints.RegexInlineRouteConstraint'",
        ),
        ("{*a}/b", "A catch-all parameter can only appear as the last segment"),
        ("x{*a}", "cannot contain a catch-all parameter"),
    ],
)
def test_route_templates_aspnet_refuses(template: str, message: str) -> None:
    with pytest.raises(RouteError) as info:
        Route.parse(template)
    assert message in str(info.value)


def test_the_router_takes_the_first_match_in_the_order_given() -> None:
    """WebJobsRouteBuilder.Build: a RouteCollection, tried in order (the functions' names)."""
    router = Router(
        [
            RouteEntry(Route.parse("items/{id}"), frozenset({"GET"}), "param"),
            RouteEntry(Route.parse("items/new"), frozenset({"GET", "POST"}), "literal"),
            RouteEntry(Route.parse("{*all}"), None, "catch-all"),
        ]
    )

    def target(method: str, path: str) -> Any:
        found = router.match(method, path.split("/"))
        return found.entry.target if isinstance(found, RouteMatch) else found

    assert target("GET", "items/new") == "param"
    assert target("post", "items/new") == "literal"  # methods compare ignoring case
    assert target("PUT", "items/x") == "catch-all"


segment = st.text(alphabet=string.ascii_letters + string.digits + "-._~ %", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(segment, min_size=2, max_size=4))
def test_a_complex_segment_splits_at_the_last_separator(parts: list[str]) -> None:
    """MatchComplexSegment matches from the right: the last literal found with LastIndexOf,
    leaving the parameter after it at least one character ("0--" gives "0" and "-")."""
    value = "-".join(parts)
    cut = value[:-1].rfind("-")
    found = Route.parse("{a}-{b}").match([value])
    assert found == ({"a": value[:cut], "b": value[cut + 1 :]} if cut > 0 else None)


@settings(max_examples=300, deadline=None)
@given(st.uuids(), st.sampled_from(["{}", "()", "", "-"]), st.booleans())
def test_every_guid_format_dotnet_writes_is_a_guid(
    value: uuid.UUID, around: str, upper: bool
) -> None:
    """Guid.ToString("B"/"P"/"N"/"D") forms all parse back (Guid.TryParseGuid)."""
    text = value.hex if around == "" else str(value)
    if around in ("{}", "()"):
        text = around[0] + text + around[1]
    assert is_guid(text.upper() if upper else text)
    assert not is_guid(text[:-1] if around == "" else text[1:])


@settings(max_examples=300, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=6))
def test_plain_decimals_are_decimals(value: decimal.Decimal) -> None:
    text = f"{value:f}"
    assert is_decimal(text) == (abs(value) <= DECIMAL_MAX)
    assert is_double(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_the_dotnet_parsers_take_any_text(text: str) -> None:
    for check in (is_guid, is_decimal, is_double, is_bool, is_datetime):
        assert check(text) in (True, False)
    assert parse_integer(text, 32) is None or -(2**31) <= parse_integer(text, 32) < 2**31  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "names", "expected"),
    [
        ("anonymous", AUTH_LEVELS, 0),
        (" ADMIN ", AUTH_LEVELS, 4),
        ("Function, User", AUTH_LEVELS, 3),  # flags are combined, as Enum.TryParse does
        ("7", AUTH_LEVELS, 7),  # a number needs no name
        ("superuser", AUTH_LEVELS, None),
        ("Admin,", AUTH_LEVELS, None),
        ("", AUTH_LEVELS, None),
    ],
)
def test_enum_values_parse_as_dotnet_parses_them(
    text: str, names: tuple[str, ...], expected: int | None
) -> None:
    assert parse_enum(text, names) == expected


def test_binding_keys_match_in_any_case_exact_spelling_first() -> None:
    """JObject.GetValue(name, OrdinalIgnoreCase): the exact key, else the first in any case."""
    config = BindingConfig({"Route": "a", "route": "b", "METHODS": ["get"]})
    assert (config["route"], config["ROUTE"], config.get("methods")) == ("b", "a", ["get"])
    assert "Methods" in config and "nope" not in config
    assert dict(config) == {"Route": "a", "route": "b", "METHODS": ["get"]}
    assert json.loads(json.dumps(dict(config))) == dict(config)
