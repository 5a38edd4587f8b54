"""``workerkit conformance``: check any language worker against the host's protocol.

    workerkit conformance [--app APP_DIR] [--cases CASES_FILE] [--worker-indexing] [--json]
                          [--strict] [--init-timeout S] [--timeout S] [--http-wait S] ...
                          -- COMMAND [ARGS...]

The worker can be written in any language and with any library: it is launched as the
Functions host launches it under ``func start``, ``COMMAND ARGS...`` plus the host's
connection arguments in both spellings, working directory = the app directory (or the
current one), with the environment Core Tools and the host give it:
``AzureWebJobsScriptRoot`` (the app directory), ``WEBSITE_HOSTNAME=localhost:7071``,
``AZURE_FUNCTIONS_ENVIRONMENT=Development``, the app's ``local.settings.json`` ``Values``
(Core Tools' values only where the environment has none), ``FUNCTIONS_APPLICATION_DIRECTORY``
and ``FUNCTIONS_WORKER_DIRECTORY``. It must dial the `workerkit.testing.TestHost` listening
on 127.0.0.1. The command line makes arguments of ``COMMAND`` that name existing files
relative to the current directory absolute, since the worker runs elsewhere (`check_worker`
runs the command as given).

Scenarios, in order (one process serves them in turn; if it dies a fresh one, started and
initialised, takes over, so one crash does not hide the other results):

===================== ==========================================================================
start-stream          the first message is StartStream with the ``--workerId``; its request_id
                      should be the ``--requestId`` (only a warning: the host ignores it)
init                  WorkerInitResponse with an explicit ``result`` of Success within
                      ``--init-timeout`` (the host's initializationTimeout, 10 s)
capabilities          which capabilities the worker declared; the three that decide which
                      control messages the host sends are flagged; empty values, a broken
                      ``HttpUri`` and ``SupportsLoadResponseCollection`` are reported
environment-reload    (a separate process, started as the host starts a placeholder worker: an
                      empty app, ``WEBSITE_PLACEHOLDER_MODE=1``) after init,
                      FunctionEnvironmentReloadResponse with result Success for the app's
                      environment and directory; then the app's functions load (with
                      ``--worker-indexing`` the worker reports them first), as the host
                      asks next. Its own process: a reload changes a worker for good
status                WorkerStatusResponse echoing the request's request_id
load-probe            a FunctionLoadRequest for a function that cannot exist is answered once,
                      with its function_id and an explicit result (Failure is fine)
app                   ``--app``: the app's ``function.json`` files are valid (read as the host
                      reads them, `workerkit.emulator`)
metadata              ``--worker-indexing`` instead: FunctionsMetadataRequest is answered and
                      the functions reported pass the host's validation (names, bindings,
                      one trigger each); they are the ones loaded (or ``function.json``'s,
                      with use_default_metadata_indexing)
load:NAME             each function loads with Success (disabled ones last, as the host)
restart-load          ``--worker-indexing``: a fresh process, never asked for metadata, loads
                      the same function ids (the host asks only the first process)
case:NAME             ``--cases`` only: each case from the cases file (below)
http-proxy:*          a worker that reports ``HttpUri`` only (HTTP streaming: the host forwards
                      each HTTP request to that address, with ``x-ms-invocation-id``, and still
                      sends the InvocationRequest, with an empty RpcHttp). ``request-first``
                      and ``invocation-first``: the first HTTP case (else a GET of the first
                      HTTP function), its request forwarded before the InvocationRequest (the
                      host's order), then after it; both answered. ``streamed``: the first
                      case with ``"streamed": true``, its body in pieces, some before the end
                      of the response. ``unmatched``: a forwarded request whose invocation
                      never comes is answered (5xx; 504 says it best), and an invocation
                      whose request never comes fails, each within ``--http-wait`` (75 s;
                      workerkit gives up after 60 s)
unknown-function      an invocation of a function id never loaded gets a Failure
                      InvocationResponse, and the worker lives on
cancel-unknown        InvocationCancel for an id never sent is harmless: the worker still answers
message-rules         no request answered twice, no unsolicited replies; user logs carry an
                      invocation id and arrive before that invocation's response (else the host
                      drops them)
terminate             WorkerTerminate: the process exits with status 0 within ``--grace``
stream-end            (a separate process) when the host ends the stream the worker exits with a
                      non-zero status within ``--grace``: the host notices a broken stream
                      only when the worker exits. Still running: a failure (an orphan
                      process). Status 0: a warning (to the host neither an error nor a
                      restart request: no new worker is started)
===================== ==========================================================================

To a worker that reports ``HttpUri`` the HTTP cases are forwarded as the host forwards them
(only to 127.0.0.1, ::1 or localhost; a refused connection is retried as the host retries
it), and ``expect.http`` is checked against the worker's own HTTP answer; a case whose
invocation fails while its HTTP answer says 2xx gets a warning (the host then cuts the
client's response). environment-reload makes one such call when the worker reports
``HttpUri`` only after the reload.

`status`, `cancel-unknown` and `terminate` need the capability that makes the host send that
message (``WorkerStatus``, ``HandlesInvocationCancelMessage``, ``HandlesWorkerTerminateMessage``);
without it they are *skipped (not advertised)*: the real host would never send them. Every
``*Response`` must carry ``result`` with an explicit status (the proto default, 0, is Failure;
no ``result`` at all is a worker error to the host). Every reply is awaited for at most
``--timeout`` seconds, so the whole run is bounded.

Results: ``pass``, ``fail``, ``warn`` (the host copes, but something is off) and ``skip``. The
exit status is 1 when a scenario failed (also on warnings with ``--strict``), 2 for a bad
command line or cases file, 0 otherwise.

Cases file
----------
JSON, written by hand::

    {
      "cases": [
        {
          "name": "hello greets by name",
          "function": "hello",
          "inputs": {"req": "/api/hello?name=Ada"},
          "expect": {"http": {"status": 200, "body": "Hello, Ada!\\n"}}
        },
        {
          "name": "sum with route parameters",
          "function": "sum",
          "inputs": {"req": {"method": "GET", "url": "/api/sum/3/4",
                             "params": {"a": "3", "b": "4"}}},
          "expect": {"status": "Success", "http": {"status": 200, "body_contains": "3 and 4"}}
        },
        {
          "name": "queue message is echoed",
          "function": "echo",
          "inputs": {"msg": "hello"},
          "trigger_metadata": {"DequeueCount": {"$json": 1}},
          "expect": {"outputs": {"out": "hello"}, "return_value": null}
        }
      ]
    }

A case: ``name`` (unique), ``function`` (a function of ``--app``), ``inputs`` (binding name →
value; ``"$trigger"`` stands for the trigger binding whatever its name, for workers that
generate names, such as the Node.js v4 model's ``httpTrigger624a61988c``), optional
``trigger_metadata`` (name → value), ``expect``, optional ``timeout`` (seconds) and
``cancel_after`` (seconds: send InvocationCancel then; the case is skipped when the worker
does not advertise HandlesInvocationCancelMessage). Keys starting with ``//`` are comments.

Values are plain JSON, sent as the host sends them: a string as ``string`` (``bytes``
when the binding's ``dataType`` is binary or stream), null as no value, anything else as
``json``. Or typed, as an object with one ``$`` key: ``{"$string": "5"}``, ``{"$json": 5}``,
``{"$bytes": "<base64>"}``, ``{"$int": 5}``, ``{"$double": 2.5}``,
``{"$collection_string": [...]}`` (also ``$collection_bytes`` in base64, ``$collection_double``,
``$collection_sint64``) and ``{"$http": {...}}``.

For an ``httpTrigger`` binding a plain value describes the request: a string is the URL of a
GET; an object has ``method`` (GET), ``url`` (``/`` ; a path is prefixed with
``http://localhost:7071``), ``headers``, ``query`` (default: parsed from the URL),
``params`` (route parameters), and ``body`` (a string as UTF-8, any other JSON value as JSON
text with ``content-type: application/json``) or ``body_base64``. The request is shaped as the
host shapes it for the capabilities the worker declared (nullable maps, body kind), and
``trigger_metadata`` gets what the host adds for HTTP (``Query``, ``Headers``, query and route
parameters, ``$request`` and the trigger unless ``RpcHttpTriggerMetadataRemoved``); your own
``trigger_metadata`` entries win.

``expect`` (all optional): ``status`` (``"Success"`` by default, ``"Failure"``, ``"Cancelled"``),
``error`` (text the failure message must contain), ``return_value`` (null: none),
``outputs`` (binding name → value; only the listed ones are checked, null means none) and
``http`` (the function's HTTP output, ``$return`` or its ``http`` out binding, compared as
the HTTP response the host would write for it, `workerkit.emulator` rules): ``status``,
``body`` (``{"$bytes": "<base64>"}`` is compared byte for byte; a string or
``{"$string": ...}`` with the body as UTF-8 text, which it must be; another JSON value or
``{"$json": ...}`` with the body parsed as JSON), ``body_contains`` (UTF-8 text the body's
bytes contain), ``headers`` (the listed ones, names case-insensitive), ``streamed`` (true: the
body must arrive in pieces, some before the end of the response; only a worker that reports
``HttpUri`` can, so for others the case is skipped). Expected values are
plain JSON compared with the decoded output (a string also matches the same text as bytes) or
typed as above, which also pins the TypedData kind (``{"$http": {...}}`` takes what ``http``
takes). What the host would reject (``collection_*`` outputs, an http response without
``body``) fails the case; what it would silently drop or change makes it a warning.

The public API (`check_worker`, `load_cases`, `Report`) runs the same checks from Python.
"""

from __future__ import annotations

from ._cases import (
    Case,
    CasesError,
    Expectation,
    HttpExpectation,
    load_cases,
    parse_cases,
)
from ._check import check_worker
from ._command import HELP as HELP
from ._command import configure as configure
from ._command import run as run
from ._control import CONTROL_CAPABILITIES
from ._report import ConformanceOptions, Outcome, Report, ScenarioResult

# `HELP`, `configure` and `run` are the `workerkit conformance` command, which
# workerkit.__main__ finds here; they are not part of the Python API.
__all__ = [
    "CONTROL_CAPABILITIES",
    "Case",
    "CasesError",
    "ConformanceOptions",
    "Expectation",
    "HttpExpectation",
    "Outcome",
    "Report",
    "ScenarioResult",
    "check_worker",
    "load_cases",
    "parse_cases",
]
