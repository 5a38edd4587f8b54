"""A worker process for tests/test_http_streaming.py: function ``probe`` answers what the
process holds (whether aiohttp is imported, how many TCP sockets it listens on), so a test
can tell that nothing of HTTP streaming is started without the setting."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workerkit
from workerkit import HttpResponse


def listening_sockets() -> int:
    """TCP sockets of this process in state LISTEN (from /proc)."""
    listening = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening.add(fields[9])  # the socket's inode
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    return len(listening & mine)


class Probe(workerkit.Worker):
    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: workerkit.Invocation) -> HttpResponse:
        state = {
            "aiohttp_loaded": "aiohttp" in sys.modules,
            "listening_sockets": listening_sockets(),
        }
        return HttpResponse(body=json.dumps(state))


if __name__ == "__main__":
    Probe.main()
