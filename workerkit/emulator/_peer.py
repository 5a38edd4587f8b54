"""Who is on the other end of a loopback connection: the emulator serves only the worker
process it launched.

The worker id the host passes is on the worker's command line, which any local process can
read (``/proc/PID/cmdline``); the real host accepts the first stream that names it. The
emulator also checks that the connection belongs to the process it started (or one of that
process's descendants), on Linux, through ``/proc``: the inode of the client's socket, found
by its port in ``/proc/net/tcp`` and ``tcp6``, must be among that family's open files.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._channel import WorkerChannel

__all__ = ["Launched", "launched_by"]

#: How long a stream that came while its worker was being started waits for the worker's pid
#: before it is refused.
START_CHECK_WAIT: Final = 10.0

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def launched_by(pid: int, client_port: int, server_port: int) -> bool | None:
    """Whether process `pid` or a descendant holds the client end of the TCP connection
    from `client_port` to `server_port`; None where this platform cannot tell (no /proc)."""
    inodes = _socket_inodes(client_port, server_port)
    if inodes is None:
        return None
    if not inodes:
        return False  # no such connection (any more)
    wanted = {f"socket:[{inode}]" for inode in inodes}
    return any(link in wanted for member in _family(pid) for link in _open_files(member))


def _socket_inodes(client_port: int, server_port: int) -> set[str] | None:
    found: set[str] = set()
    readable = False
    for table in _TABLES:
        try:
            with open(table) as rows:
                lines = rows.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, inode = fields[1], fields[2], fields[9]
            if _port(local) == client_port and _port(remote) == server_port and inode != "0":
                found.add(inode)
    return found if readable else None


def _port(address: str) -> int:
    """The port of an address as /proc/net/tcp writes it (``0100007F:1F90``)."""
    try:
        return int(address.rpartition(":")[2], 16)
    except ValueError:
        return -1


def _family(pid: int) -> Iterable[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                after_name = stat.read().rpartition(")")[2].split()
            parent = int(after_name[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or unreadable
            continue
        children.setdefault(parent, []).append(int(entry))
    family, pending = [], [pid]
    while pending:
        member = pending.pop()
        family.append(member)
        pending.extend(children.get(member, ()))
    return family


def _open_files(pid: int) -> Iterable[str]:
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        try:
            yield os.readlink(f"{directory}/{name}")
        except OSError:
            continue


class Launched:
    """The worker processes the emulator started, by worker id, and the check that a stream
    naming one of them comes from that process (`TestHost`'s ``check_peer``)."""

    def __init__(self, server_port: Callable[[], int]) -> None:
        self.channels: dict[str, WorkerChannel] = {}
        self._server_port = server_port
        #: Per worker id, its channel once registered (a stream may arrive before that).
        self._started: dict[str, asyncio.Future[WorkerChannel]] = {}

    def register(self, channel: WorkerChannel) -> None:
        self.channels[channel.worker_id] = channel
        started = self._started_future(channel.worker_id)
        if not started.done():
            started.set_result(channel)

    def forget(self, worker_id: str) -> None:
        self.channels.pop(worker_id, None)
        started = self._started.pop(worker_id, None)
        if started is not None and not started.done():
            started.cancel()

    def check(
        self, worker_id: str, peer: tuple[str, int] | None
    ) -> str | Awaitable[str | None] | None:
        """Refuse a stream that does not come from the worker process started for
        `worker_id` (a reason), or accept it (None)."""
        channel = self.channels.get(worker_id)
        if channel is None:
            # Its process is being started: the id is already in /proc, and a stream may
            # come before the channel is registered. Wait for the pid, then check.
            return self._check_when_started(worker_id, peer)
        return self._check_channel(channel, peer)

    def _started_future(self, worker_id: str) -> asyncio.Future[WorkerChannel]:
        if worker_id not in self._started:
            self._started[worker_id] = asyncio.get_running_loop().create_future()
        return self._started[worker_id]

    async def _check_when_started(self, worker_id: str, peer: tuple[str, int] | None) -> str | None:
        started = self._started_future(worker_id)
        try:
            channel = await asyncio.wait_for(asyncio.shield(started), START_CHECK_WAIT)
        except TimeoutError:
            return f"no worker process was started for it within {START_CHECK_WAIT:g} s"
        except asyncio.CancelledError:
            if not started.cancelled():
                raise  # this check itself is cancelled (the host is stopping)
            return "its worker process is gone"
        return self._check_channel(channel, peer)

    def _check_channel(self, channel: WorkerChannel, peer: tuple[str, int] | None) -> str | None:
        if peer is None:
            return None
        pid = channel.process.pid
        if launched_by(pid, peer[1], self._server_port()) is False:
            return f"it does not come from the worker process (pid {pid}), but from port {peer[1]}"
        return None
