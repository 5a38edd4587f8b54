"""The host's command line for the bare baseline workers, without importing workerkit.

Both spellings are read; a ``--functions-*`` value wins (HOST_PROTOCOL §1.1).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_NAMES = {
    "--host": "host",
    "--port": "port",
    "--workerId": "worker_id",
    "--requestId": "request_id",
    "--functions-uri": "uri",
    "--functions-worker-id": "f_worker_id",
    "--functions-request-id": "f_request_id",
}


@dataclass(frozen=True)
class Args:
    host: str
    port: int
    worker_id: str
    request_id: str


def parse(argv: Sequence[str]) -> Args:
    values: dict[str, str] = {}
    for name, value in itertools.pairwise(argv):
        if name in _NAMES:
            values[_NAMES[name]] = value
    host, port = values.get("host", "127.0.0.1"), int(values.get("port", "0"))
    if "uri" in values:
        parts = urlsplit(values["uri"])
        host, port = parts.hostname or host, parts.port or port
    worker_id = values.get("f_worker_id") or values.get("worker_id", "")
    request_id = values.get("f_request_id") or values.get("request_id", "")
    if not port or not worker_id:
        raise SystemExit("usage: WORKER --functions-uri URI --functions-worker-id ID ...")
    return Args(host, port, worker_id, request_id)
