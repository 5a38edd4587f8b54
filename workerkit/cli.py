"""The command line the Functions host starts a worker with, parsed into one object.

The host appends its connection arguments to every launch, under two spellings at once::

    --host 127.0.0.1 --port P --workerId W --requestId R --grpcMaxMessageLength N
    --functions-uri http://127.0.0.1:P/ --functions-worker-id W --functions-request-id R
    --functions-grpc-max-message-length N

Precedence, decided here and nowhere else: a ``--functions-*`` value wins over its older
spelling when both are given (the host's own comment asks workers to prefer them); the older
spelling is the fallback. ``--functions-uri`` supplies both host and port. Arguments we do not
know (from ``worker.config.json`` or a future host) are ignored. A missing required value is a
one-line error on stderr and exit status 2.

A worker run by hand (none of these options given) prints instead what starts a worker and
the ``workerkit host`` command that runs this one, and exits 2; ``-h``/``--help`` prints the
same and exits 0. Either only when the arguments are not a complete host command line, so a
``-h`` among a host's arguments is ignored like any argument we do not know.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HostArgs", "HostArgsError", "parse_host_args"]

#: The host always passes ``int.MaxValue``; used when neither spelling gives a length.
DEFAULT_MAX_MESSAGE_LENGTH = 2_147_483_647

# option name -> (field, is the preferred spelling)
_OPTIONS: dict[str, tuple[str, bool]] = {
    "--host": ("host", False),
    "--port": ("port", False),
    "--workerId": ("worker_id", False),
    "--requestId": ("request_id", False),
    "--grpcMaxMessageLength": ("max_message_length", False),
    "--functions-uri": ("uri", True),
    "--functions-worker-id": ("worker_id", True),
    "--functions-request-id": ("request_id", True),
    "--functions-grpc-max-message-length": ("max_message_length", True),
}


class HostArgsError(ValueError):
    """The host's command line is incomplete or malformed."""


@dataclass(frozen=True, slots=True)
class HostArgs:
    """Where the host listens and who this worker is, from the host's command line."""

    host: str
    port: int
    worker_id: str
    request_id: str
    max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH

    def to_argv(self) -> list[str]:
        """The argv the real host would pass for these values (both spellings, host order)."""
        length = str(self.max_message_length)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [
            "--host", self.host, "--port", str(self.port),
            "--workerId", self.worker_id, "--requestId", self.request_id,
            "--grpcMaxMessageLength", length,
            "--functions-uri", f"http://{host}:{self.port}/",
            "--functions-worker-id", self.worker_id,
            "--functions-request-id", self.request_id,
            "--functions-grpc-max-message-length", length,
        ]  # fmt: skip


def parse_host_args(argv: Sequence[str]) -> HostArgs:
    """Parse the host's arguments (without the program name); raise `HostArgsError`."""
    preferred: dict[str, str] = {}
    fallback: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        option = _OPTIONS.get(name)
        if option is None:  # not ours: worker.config.json arguments or a newer host
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(argv):
            value = argv[i + 1]
            i += 2
        else:
            raise HostArgsError(f"{name} needs a value")
        field, is_preferred = option
        (preferred if is_preferred else fallback)[field] = value

    values = {**fallback, **{k: v for k, v in preferred.items() if k != "uri"}}
    if "uri" in preferred:
        host, port = _split_uri(preferred["uri"])
        values["host"], values["port"] = host, str(port)

    missing = [
        spelling
        for field, spelling in (
            ("host", "--functions-uri or --host"),
            ("port", "--functions-uri or --port"),
            ("worker_id", "--functions-worker-id or --workerId"),
        )
        if not values.get(field)
    ]
    if missing:
        raise HostArgsError("missing " + ", ".join(missing))
    return HostArgs(
        host=values["host"],
        port=_int("port", values["port"], 1, 65535),
        worker_id=values["worker_id"],
        request_id=values.get("request_id", ""),
        max_message_length=_int(
            "max message length",
            values.get("max_message_length", str(DEFAULT_MAX_MESSAGE_LENGTH)),
            1,
            DEFAULT_MAX_MESSAGE_LENGTH,
        ),
    )


def parse_host_args_or_exit(
    argv: Sequence[str], prog: str = "worker", script: str | None = None
) -> HostArgs:
    """`parse_host_args`, or exit: 0 after printing `started_by_host` for ``-h``/``--help``;
    2 after printing it when no host option was given (a worker run by hand), or after one
    line naming the error. `script` is the worker's path (default ``sys.argv[0]``)."""
    try:
        return parse_host_args(argv)
    except HostArgsError as exc:
        script = sys.argv[0] if script is None else script
        asked = any(arg in ("-h", "--help") for arg in argv)
        if asked or not any(arg.partition("=")[0] in _OPTIONS for arg in argv):
            intro = "" if asked else f"{os.path.basename(script)}: error: no host arguments\n\n"
            print(intro + started_by_host(script), file=sys.stderr, end="")
            raise SystemExit(0 if asked else 2) from None
        print(
            f"LanguageWorkerConsoleLog{prog}: error: {exc}"
            f" ({os.path.basename(script)} --help: how a worker is started)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def started_by_host(script: str) -> str:
    """What a person who runs the worker `script` by hand needs: who starts a worker, the
    ``workerkit host`` command that runs this one, and the arguments a host passes."""
    name = os.path.basename(script) or "worker"
    worker_dir = os.path.dirname(os.path.abspath(script))
    has_app = os.path.isdir(os.path.join(worker_dir, "app"))
    app = _shown(os.path.join(worker_dir, "app")) if has_app else "APP_DIR"
    lines = [
        f"{name} is an Azure Functions language worker. It is not run by hand: the Functions",
        "host (or `workerkit host`, a local one) starts it with the host's arguments, and it",
        "connects back to the host over gRPC. To serve a function app with it here:",
        "",
        f"    workerkit host {app} --worker {_shown(worker_dir)}",
    ]
    notes = []
    if not has_app:
        notes.append("APP_DIR: the function app directory (with host.json).")
    if not os.path.isfile(os.path.join(worker_dir, "worker.config.json")):
        notes.append(f"`workerkit host` needs a worker.config.json naming {name} next to it.")
    import importlib.util  # here: a worker run by hand only

    if importlib.util.find_spec("aiohttp") is None:
        notes.append("`workerkit host` needs aiohttp: pip install 'workerkit[host]'.")
    lines += ["", *notes] if notes else []
    lines += [
        "",
        "A host passes these arguments (both spellings; a --functions-* value wins):",
        "",
        "    --host 127.0.0.1 --port PORT --workerId ID --requestId ID",
        "    --grpcMaxMessageLength BYTES --functions-uri http://127.0.0.1:PORT/",
        "    --functions-worker-id ID --functions-request-id ID",
        "    --functions-grpc-max-message-length BYTES",
        "",
        "Required: the host's address (--functions-uri, or --host and --port) and the",
        "worker id. The worker opens FunctionRpc.EventStream there and sends StartStream",
        "with that worker id.",
    ]
    return "\n".join(lines) + "\n"


def _shown(path: str) -> str:
    """`path` for a command line: relative to the working directory when that is shorter."""
    try:
        relative = os.path.relpath(path)
    except (ValueError, OSError):  # another drive (Windows); no working directory
        relative = path
    import shlex  # here: only messages need it, not start-up

    return shlex.quote(min(relative, path, key=len))


def _split_uri(uri: str) -> tuple[str, int]:
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise HostArgsError(f"--functions-uri {uri!r} is not a valid URI: {exc}") from None
    if not host or port is None:
        raise HostArgsError(f"--functions-uri {uri!r} must look like http://127.0.0.1:PORT/")
    return host, port


def _int(what: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HostArgsError(f"{what} {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise HostArgsError(f"{what} {value} is outside {low}..{high}")
    return value
